# The two buckets of the seed: backups written by the worker, and the KYC
# documents the platform writes and the worker inventories and restores.

resource "google_storage_bucket" "backups" {
  name     = var.backups_bucket
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # The worker never overwrites a complete backup; versioning protects
  # against everyone else (a mistaken `gsutil rm`, a compromised key).
  versioning {
    enabled = true
  }

  # Retention is the app's job (cleanup-old-backups, SPEC section 6: it knows
  # which backups are complete and keeps safety floors). These rules are only
  # a backstop and never delete earlier than the app would:
  #
  # 1. What the app deleted (or `secrets rekey` replaced) stays as a
  #    noncurrent version for 30 days, then goes.
  # 2. A live object under a retained prefix is deleted after 3 years: longer
  #    than the longest default retention (drill reports, 24 months). This
  #    only ever acts if cleanup stopped running for years, or if retention
  #    was configured beyond 3 years (then raise this too).
  #    secrets/latest.json.encrypted is outside these prefixes: never deleted.
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

  depends_on = [google_project_service.apis]
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
