# The full drill (`dr-drill` with mode=full; README "Run a full drill"):
# `recover --apply` rehearsed into scratch targets the drill tears down again.
# Off unless var.drill_scratch_project is set: then the secrets go into that
# project and the documents into a scratch bucket in it, and the worker gets
# rights there and nowhere new in production. The scratch databases go to the
# drill's server (DRILL_DATABASE_URL, by default DATABASE_URL), as the
# database drill's do.
#
# The scratch project must be a project of its own: the full drill creates
# and deletes secrets and objects there. The worker refuses a scratch project
# equal to GOOGLE_CLOUD_PROJECT, and `terraform plan` refuses one equal to the
# platform's project or the vault's (below).

variable "drill_scratch_project" {
  description = "Project the full drill recovers the secrets and documents into and deletes them from afterwards (DRILL_SECRET_MANAGER_PROJECT): a scratch project of its own, never var.project or var.vault_project. Empty (the default): no full drill is set up, and `drill --mode full` refuses, naming DRILL_SECRET_MANAGER_PROJECT."
  type        = string
  default     = ""

  validation {
    condition     = var.drill_scratch_project == "" || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.drill_scratch_project))
    error_message = "drill_scratch_project must be empty (no full drill) or a project ID: 6 to 30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "drill_scratch_bucket" {
  description = "Scratch bucket, in var.drill_scratch_project, the full drill recovers the documents into (DRILL_DOCUMENTS_STORE). Created only when drill_scratch_project is set."
  type        = string
  default     = "keshless-drill-scratch"
}

locals {
  full_drill = var.drill_scratch_project != ""
  # The worker's DRILL_DOCUMENTS_STORE: empty without a scratch project.
  drill_documents_store = local.full_drill ? "gs://${var.drill_scratch_bucket}" : ""
}

resource "google_project_service" "drill_scratch" {
  for_each = local.full_drill ? toset(["secretmanager.googleapis.com", "storage.googleapis.com"]) : toset([])

  project            = var.drill_scratch_project
  service            = each.value
  disable_on_destroy = false
}

# What the full drill does with Secret Manager there, and nothing more: create
# the recovered secrets (with their settings, aliases and version states),
# read them back for the check, and delete them in the teardown.
resource "google_project_iam_custom_role" "drill_scratch_secrets" {
  count = local.full_drill ? 1 : 0

  project     = var.drill_scratch_project
  role_id     = "keshlessOpsDrillScratchSecrets"
  title       = "keshless-ops full drill: scratch secrets"
  description = "Creates, reads and deletes the secrets a full drill recovers into the scratch project."
  permissions = [
    "secretmanager.secrets.create",
    "secretmanager.secrets.delete",
    "secretmanager.secrets.get",
    "secretmanager.secrets.list",
    "secretmanager.secrets.update",
    "secretmanager.versions.access",
    "secretmanager.versions.add",
    "secretmanager.versions.destroy",
    "secretmanager.versions.disable",
    "secretmanager.versions.get",
    "secretmanager.versions.list",
  ]

  lifecycle {
    precondition {
      condition     = var.drill_scratch_project != var.project && var.drill_scratch_project != local.vault_project
      error_message = "drill_scratch_project must be a scratch project of its own: the full drill creates and deletes secrets and objects there, so it can be neither var.project (production) nor the vault's project."
    }
  }

  depends_on = [google_project_service.drill_scratch]
}

resource "google_project_iam_member" "worker_drill_scratch_secrets" {
  count = local.full_drill ? 1 : 0

  project = var.drill_scratch_project
  role    = google_project_iam_custom_role.drill_scratch_secrets[0].id
  member  = local.worker_member
}

# The scratch bucket: unversioned (the teardown deletes what it wrote, and
# nothing lingers as a noncurrent version), no soft delete, and a lifecycle
# rule that deletes anything after 3 days, so even a drill whose teardown and
# every later sweep failed leaves no copy of the documents behind for long.
resource "google_storage_bucket" "drill_scratch" {
  count = local.full_drill ? 1 : 0

  project  = var.drill_scratch_project
  name     = var.drill_scratch_bucket
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  versioning {
    enabled = false
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  lifecycle_rule {
    condition {
      age = 3
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.drill_scratch]
}

# Write, read, list and delete the recovered documents and the drill's
# journal, on the scratch bucket alone.
resource "google_storage_bucket_iam_member" "worker_drill_scratch_objects" {
  count = local.full_drill ? 1 : 0

  bucket = var.drill_scratch_bucket
  role   = "roles/storage.objectAdmin"
  member = local.worker_member

  depends_on = [google_storage_bucket.drill_scratch]
}
