# Secret Manager entries the worker reads. Terraform creates the secrets only,
# never a version: values would otherwise sit in the Terraform state. Fill
# them by hand (README, "Deploy"):
#   gcloud secrets versions add JOB_SECRET --data-file=-
#
# SECRETS_ENCRYPTION_KEY also lives OFFLINE (a password manager or a sealed
# envelope, outside Google Cloud): it is the only way to decrypt the secrets
# backups when the project itself is lost.

resource "google_secret_manager_secret" "job_secret" {
  secret_id = "JOB_SECRET"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret" "secrets_encryption_key" {
  secret_id = "SECRETS_ENCRYPTION_KEY"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# The database URL carries a password, so it is a secret too.
resource "google_secret_manager_secret" "database_url" {
  secret_id = "DATABASE_URL"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
