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

# The age identity (AGE-SECRET-KEY-1…) the monthly dr-drill decrypts the
# encrypted dumps with; the worker reads it through the Secret Manager API
# only when a drill restores (BACKUP_AGE_IDENTITY_SECRET), never at start.
# Fill it by hand from `age-keygen`:
#   age-keygen -o drill.key && gcloud secrets versions add BACKUP_AGE_IDENTITY --data-file=drill.key && shred -u drill.key
# and put its public key in var.backup_encryption_recipients. The offline
# break-glass key is a second recipient whose identity never enters Google
# Cloud: it is what decrypts the dumps when this project is lost.
resource "google_secret_manager_secret" "backup_age_identity" {
  secret_id = "BACKUP_AGE_IDENTITY"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
