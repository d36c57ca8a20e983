# The worker's identity, with only what its jobs need. Every binding is on
# the one resource it concerns, never project-wide, except Cloud SQL client
# (Cloud SQL has no per-instance IAM) and only when an instance is given, and
# the two Secret Manager reads the secrets backup needs (below).

resource "google_service_account" "worker" {
  account_id   = "keshless-ops-worker"
  display_name = "keshless-ops backup worker"
  description  = "Runs keshless-ops worker: backups, retention, inventories, drills."

  depends_on = [google_project_service.apis]
}

locals {
  worker_member = "serviceAccount:${google_service_account.worker.email}"
}

# Backups: create, read, list, delete (retention, and replacing
# secrets/latest.json.encrypted), server-side copy (monthly, the documents
# mirror), and reading the bucket's retention policy (cleanup never tries a
# deletion it would refuse). Nothing more: not storage.objects.update (so no
# hold of a pinned backup can be released, nor its reason changed), not
# storage.buckets.update (so neither the unlocked retention policy nor soft
# delete can be removed), no IAM changes. A compromised worker can delete
# only backups older than the bucket's retention period and not pinned, and
# soft delete keeps even those recoverable.
#
# The vault is in another project (var.vault_project): the role is defined
# there (a project's custom role can only be granted on that project's
# resources) and bound on the bucket alone, the worker's only right in the
# vault project. Nobody in the main project gets any role on it.
resource "google_project_iam_custom_role" "backup_writer" {
  project     = local.vault_project
  role_id     = "keshlessOpsBackupWriter"
  title       = "keshless-ops backup writer"
  description = "Writes, reads, lists and deletes (retention) objects of the backups bucket, and reads its retention policy."
  permissions = [
    "storage.buckets.get",
    "storage.objects.create",
    "storage.objects.delete",
    "storage.objects.get",
    "storage.objects.list",
  ]

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "worker_backups_writer" {
  bucket = google_storage_bucket.backups.name
  role   = google_project_iam_custom_role.backup_writer.id
  member = local.worker_member
}

# `keshless-ops documents url` on Cloud Run signs V4 URLs through IAM
# signBlob as the worker's own service account (there is no key file):
# that needs iam.serviceAccounts.signBlob on itself, and on nothing else.
resource "google_service_account_iam_member" "worker_signs_as_itself" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.worker_member
}

# Documents: read and list every generation (inventory, drill check, the
# mirror's server-side copies into the backups bucket). Nothing the worker
# runs writes to the documents bucket: `restore documents` is an operator's
# command, run with the operator's own identity, which needs
# roles/storage.objectUser there (replacing a live object needs delete too).
resource "google_storage_bucket_iam_member" "worker_documents_viewer" {
  bucket = google_storage_bucket.documents.name
  role   = "roles/storage.objectViewer"
  member = local.worker_member
}

# Pull the jobs.
resource "google_pubsub_subscription_iam_member" "worker_subscriber" {
  subscription = google_pubsub_subscription.worker.id
  role         = "roles/pubsub.subscriber"
  member       = local.worker_member
}

# Publish jobs (POST /backup-jobs/{job}) and dead letters (a permanent error,
# or the last allowed attempt, is dead-lettered by the worker itself).
resource "google_pubsub_topic_iam_member" "worker_jobs_publisher" {
  topic  = google_pubsub_topic.jobs.id
  role   = "roles/pubsub.publisher"
  member = local.worker_member
}

resource "google_pubsub_topic_iam_member" "worker_dead_letters_publisher" {
  topic  = google_pubsub_topic.dead_letters.id
  role   = "roles/pubsub.publisher"
  member = local.worker_member
}

# Exactly the secrets the worker's environment reads (worker.tf).
resource "google_secret_manager_secret_iam_member" "worker_job_secret" {
  secret_id = google_secret_manager_secret.job_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.worker_member
}

resource "google_secret_manager_secret_iam_member" "worker_secrets_encryption_key" {
  secret_id = google_secret_manager_secret.secrets_encryption_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.worker_member
}

# Read by the drill through the API (BACKUP_AGE_IDENTITY_SECRET), not as env.
resource "google_secret_manager_secret_iam_member" "worker_backup_age_identity" {
  secret_id = google_secret_manager_secret.backup_age_identity.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.worker_member
}

resource "google_secret_manager_secret_iam_member" "worker_database_url" {
  secret_id = google_secret_manager_secret.database_url.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.worker_member
}

resource "google_project_iam_member" "worker_cloud_sql_client" {
  count = var.cloud_sql_instance == "" ? 0 : 1

  project = var.project
  role    = "roles/cloudsql.client"
  member  = local.worker_member
}

# secrets-backup reads every secret of the project (SECRETS_SOURCE=secret-manager):
# viewer lists secrets and versions with their metadata, secretAccessor reads
# the payloads. Project-level and unconditioned, for two reasons: IAM
# conditions on Secret Manager can test a secret's name, type and tags but not
# its labels, so "only secrets labelled backup=true" cannot be a condition;
# and a secret created tomorrow must be in next week's backup without anyone
# remembering to grant it (the drill fails when one is missing). Restoring
# needs more: the operator running `restore secrets --to-secret-manager`
# uses their own identity with roles/secretmanager.admin on the target project.
resource "google_project_iam_member" "worker_secret_manager_viewer" {
  project = var.project
  role    = "roles/secretmanager.viewer"
  member  = local.worker_member
}

resource "google_project_iam_member" "worker_secret_manager_accessor" {
  project = var.project
  role    = "roles/secretmanager.secretAccessor"
  member  = local.worker_member
}
