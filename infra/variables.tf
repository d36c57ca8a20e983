# Inputs. Names that the code also knows (topics, subscriptions) are not
# variables: they are fixed in pubsub.tf to the defaults of src/config.rs, and
# tests/infra.rs checks that they agree.

variable "project" {
  description = "Google Cloud project ID the platform runs in."
  type        = string
}

variable "region" {
  description = "Region of the buckets, the scheduler jobs and the worker."
  type        = string
  default     = "europe-west1"
}

# ---------------------------------------------------------------- the vault
#
# The disaster this product exists for is losing the project (deleted,
# compromised, locked out). Backups kept in that project go with it, so the
# backups bucket (the vault) lives in a project of its own, administered by
# other people, in a location that survives the loss of one region.

variable "vault_project" {
  description = "Project ID of the vault: the project that holds the backups bucket, separate from var.project so that losing, deleting or compromising the platform's project leaves the backups intact. Its owners should not be the main project's owners. Empty means var.project: FOR DEVELOPMENT ONLY."
  type        = string
  # !!! DEVELOPMENT DEFAULT. An empty vault_project puts the backups in the
  # !!! project they protect: one `gcloud projects delete`, one compromised
  # !!! owner or one billing lock-out destroys the platform AND its backups.
  # !!! Every real environment must set vault_project to another project.
  default = ""
}

variable "vault_location" {
  description = "Location of the vault bucket: a dual-region (EUR4: Netherlands and Finland; NAM4) or a multi-region (EU, US) so that losing one region loses no backup, or a single region (europe-west4) to save cost. Dual- and multi-regions cost more per GB stored and per GB replicated (see README, \"The vault\")."
  type        = string
  default     = "EUR4"

  validation {
    condition     = can(regex("^([A-Za-z]{2,4}[0-9]?|[a-z]+-[a-z]+[0-9]+)$", var.vault_location))
    error_message = "vault_location must be a Cloud Storage location: a dual-region (EUR4, NAM4, ASIA1), a multi-region (EU, US, ASIA) or a region (europe-west4)."
  }
}

variable "backups_bucket" {
  description = "Bucket the worker writes backups to (GCS_BACKUPS_BUCKET): the vault, created in var.vault_project at var.vault_location."
  type        = string
  default     = "keshless-backups"
}

variable "backups_retention_days" {
  description = "Bucket retention policy of the backups bucket: no object can be deleted or replaced, by anyone, before it is this many days old. Protects the backups from a compromised worker account; cleanup-old-backups reads it and never tries earlier (\"locked until ...\")."
  type        = number
  default     = 7

  validation {
    condition     = var.backups_retention_days >= 1 && var.backups_retention_days <= 7
    error_message = "backups_retention_days must be from 1 to 7: secrets-backup replaces secrets/latest.json.encrypted every week, which the policy refuses while the previous one is younger than the period."
  }
}

variable "backups_retention_locked" {
  description = "Lock the backups bucket's retention policy. IRREVERSIBLE: a locked policy can never be removed or shortened, and the bucket cannot be deleted while any object is younger than it. Leave false until the policy is known to be right."
  type        = bool
  default     = false
}

variable "backups_soft_delete_days" {
  description = "Days a deleted or replaced backup object stays recoverable through soft delete (7 to 90)."
  type        = number
  default     = 30

  validation {
    condition     = var.backups_soft_delete_days >= 7 && var.backups_soft_delete_days <= 90
    error_message = "backups_soft_delete_days must be from 7 to 90 (Cloud Storage's soft delete limits)."
  }
}

variable "documents_bucket" {
  description = "Versioned bucket of KYC documents (GCS_DOCUMENTS_BUCKET)."
  type        = string
  default     = "keshless-documents"
}

variable "schedule_time_zone" {
  description = "IANA time zone the scheduler's cron expressions and the worker's idempotency periods are read in (SCHEDULE_TIME_ZONE). Both must use the same zone, so both read this variable."
  type        = string
  default     = "UTC"
}

variable "image" {
  description = "Container image of keshless-ops (built from the Dockerfile), e.g. europe-west1-docker.pkg.dev/PROJECT/keshless/keshless-ops:TAG."
  type        = string
}

variable "worker_instances" {
  description = "Worker instances pulling the subscription. Several are safe (the ledger claims each key atomically); one is enough for five jobs a week."
  type        = number
  default     = 1
}

variable "cloud_sql_instance" {
  description = "Connection name (PROJECT:REGION:INSTANCE) of the Cloud SQL instance to back up, mounted at /cloudsql/<name>; empty when DATABASE_URL points elsewhere."
  type        = string
  default     = ""
}

variable "documents_soft_delete_days" {
  description = "Days a deleted or replaced document stays recoverable through soft delete (7 to 90)."
  type        = number
  default     = 30

  validation {
    condition     = var.documents_soft_delete_days >= 7 && var.documents_soft_delete_days <= 90
    error_message = "documents_soft_delete_days must be from 7 to 90 (Cloud Storage's soft delete limits)."
  }
}

variable "databases" {
  description = "Databases on the DATABASE_URL server that postgres-backup protects (DATABASES). Each gets its own daily Cloud Scheduler job, whose message names it, so each is backed up exactly once per day under its own idempotency key (postgres-backup:<database>:<date>)."
  type        = list(string)
  default     = ["keshless"]

  validation {
    condition     = length(var.databases) > 0 && alltrue([for database in var.databases : can(regex("^[A-Za-z0-9_-]{1,63}$", database))])
    error_message = "databases must list at least one database, each 1-63 letters, digits, '_' or '-' (they become object names)."
  }
}

variable "alert_emails" {
  description = "Email addresses every alert policy of monitoring.tf notifies (one email notification channel each). Set this or alert_notification_channels."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for address in var.alert_emails : can(regex("^[^@[:space:]]+@[^@[:space:]]+$", address))])
    error_message = "alert_emails must be email addresses (name@example.com)."
  }
}

variable "alert_notification_channels" {
  description = "Existing Cloud Monitoring notification channels (projects/PROJECT/notificationChannels/ID: PagerDuty, Slack, SMS) every alert policy notifies besides alert_emails."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for channel in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", channel))])
    error_message = "alert_notification_channels must be channel ids of the form projects/PROJECT/notificationChannels/ID."
  }
}

variable "secrets_filter" {
  description = "Secret Manager filter narrowing what secrets-backup protects (SECRETS_FILTER), e.g. labels.backup=true; empty: every secret of the project."
  type        = string
  default     = ""
}

variable "secrets_locations" {
  description = "Comma-separated regions whose regional Secret Manager secrets secrets-backup protects too (SECRETS_LOCATIONS), e.g. europe-west1; empty: global secrets only."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([a-z][a-z0-9-]*(,[a-z][a-z0-9-]*)*)?$", var.secrets_locations))
    error_message = "secrets_locations must be empty or comma-separated regions such as europe-west1,europe-west4."
  }
}

variable "backup_compression" {
  description = "BACKUP_COMPRESSION: zstd (level 3), zstd:LEVEL (1-19), gzip (pg_dump's own) or none."
  type        = string
  default     = "zstd:3"

  validation {
    condition     = can(regex("^(zstd|zstd:([1-9]|1[0-9])|gzip|none)$", var.backup_compression))
    error_message = "backup_compression must be zstd, zstd:LEVEL with LEVEL 1 to 19, gzip or none."
  }
}

variable "backup_encryption" {
  description = "BACKUP_ENCRYPTION: required (the worker refuses to start without backup_encryption_recipients) or optional."
  type        = string
  default     = "required"

  validation {
    condition     = contains(["required", "optional"], var.backup_encryption)
    error_message = "backup_encryption must be required or optional."
  }
}

variable "backup_encryption_recipients" {
  description = "BACKUP_ENCRYPTION_RECIPIENTS: the age X25519 public keys (age1...) every dump and globals file is encrypted to. Include the drill's key (whose identity is the BACKUP_AGE_IDENTITY secret) and an offline break-glass key whose identity never enters Google Cloud."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for key in var.backup_encryption_recipients : can(regex("^age1[02-9ac-hj-np-z]{58}$", key))])
    error_message = "backup_encryption_recipients must be age X25519 public keys (age1 followed by 58 bech32 characters), as age-keygen prints them; never a private AGE-SECRET-KEY-1 key."
  }
}
