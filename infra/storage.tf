# The two buckets of the seed: backups written by the worker, and the KYC
# documents the platform writes and the worker inventories and restores.

# The backups bucket is the vault: in its own project (var.vault_project),
# at a location that can be a dual- or multi-region (var.vault_location), so
# losing the platform's project or its region does not lose the backups.
# Nobody in the main project holds a role on the vault project; the worker's
# service account gets one binding on this bucket (iam.tf). Its deletions
# (retention) are bounded by the retention policy below and soft delete, both
# administered only from the vault project.
resource "google_storage_bucket" "backups" {
  project  = local.vault_project
  name     = var.backups_bucket
  location = var.vault_location

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Immutability against a compromised account (issue 20): nothing in this
  # bucket can be deleted or replaced before it is backups_retention_days
  # old, whoever asks — the worker's own credentials included. Cloud Storage
  # refuses a retention policy on a versioned bucket, so versioning is off
  # here; soft delete keeps what is deleted or replaced recoverable instead,
  # and pinned backups (`keshless-ops backups pin`) carry temporary holds that
  # no deletion and no lifecycle rule overrides.
  versioning {
    enabled = false
  }

  retention_policy {
    retention_period = var.backups_retention_days * 86400
    is_locked        = var.backups_retention_locked
  }

  soft_delete_policy {
    retention_duration_seconds = var.backups_soft_delete_days * 86400
  }

  # Retention is the app's job (cleanup-old-backups, SPEC section 6: it knows
  # which backups are complete and keeps safety floors). This rule is only a
  # backstop and never deletes earlier than the app would: a live object
  # under a retained prefix is deleted after 3 years, longer than the longest
  # default retention (drill reports, 24 months). It only ever acts if
  # cleanup stopped running for years, or if retention was configured beyond
  # 3 years (then raise this too). secrets/latest.json.encrypted is outside
  # these prefixes: never deleted. Held (pinned) objects are never deleted.
  #
  # Noncurrent versions left from when this bucket was versioned (before the
  # retention policy) go after 30 days, as they did then.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age            = 1095
      with_state     = "LIVE"
      matches_prefix = ["postgresql/", "secrets/weekly/", "documents/inventory/", "drills/"]
    }
    action {
      type = "Delete"
    }
  }

  # Backups outlive a mistaken `terraform destroy`.
  force_destroy = false
  lifecycle {
    prevent_destroy = true
  }

  depends_on = [google_project_service.apis, google_project_service.vault_storage]
}

resource "google_storage_bucket" "documents" {
  name     = var.documents_bucket
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # `keshless-ops restore documents --as-of TIME` brings back the generation
  # that was live at TIME: it needs every noncurrent generation, so there is
  # deliberately no lifecycle rule here that deletes old versions.
  versioning {
    enabled = true
  }

  # A deleted generation (noncurrent versions included) stays recoverable for
  # this long even after a hard delete.
  soft_delete_policy {
    retention_duration_seconds = var.documents_soft_delete_days * 86400
  }

  force_destroy = false
  lifecycle {
    prevent_destroy = true
  }

  depends_on = [google_project_service.apis]
}
