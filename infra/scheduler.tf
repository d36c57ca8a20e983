# Cloud Scheduler fires the schedule of SPEC section 2 (src/schedule.rs,
# SCHEDULE) by publishing to "backup-jobs". Each message names its job in the
# `job` attribute, says `source=cloud-scheduler` (so the worker keys it by
# period: a double or late fire runs once) and carries `x-job-secret`.
#
# The secret: Cloud Scheduler stores the attributes in the job, so the value
# has to be in the job definition, and whatever Terraform reads or writes is
# kept in its state. The least bad option is to read the current version of
# JOB_SECRET at plan time (below): the value is never written in this
# repository or in a tfvars file, but it IS in the state, in plain text, so
# the state bucket must be as private as the secret itself. After rotating
# JOB_SECRET, run `terraform apply` again so the jobs carry the new value.
data "google_secret_manager_secret_version" "job_secret" {
  secret = google_secret_manager_secret.job_secret.id
}

# One job per database: each message names its database, so the worker keys
# each database's run by its own period (postgres-backup:<database>:<date>)
# and several workers can share the dumps; a failing database is retried and
# dead-lettered on its own, without holding up the others.
resource "google_cloud_scheduler_job" "postgres_backup" {
  for_each    = toset(var.databases)
  name        = "postgres-backup-${each.value}"
  description = "Daily 02:00: pg_dump of database ${each.value}."
  schedule    = "0 2 * * *"
  time_zone   = var.schedule_time_zone
  region      = var.region

  pubsub_target {
    topic_name = google_pubsub_topic.jobs.id
    data       = base64encode(jsonencode({ params = { database = each.value } }))
    attributes = {
      job            = "postgres-backup"
      source         = "cloud-scheduler"
      "x-job-secret" = data.google_secret_manager_secret_version.job_secret.secret_data
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_scheduler_job" "secrets_backup" {
  name        = "secrets-backup"
  description = "Weekly, Sunday 04:00: encrypted copy of the configured secrets."
  schedule    = "0 4 * * 0"
  time_zone   = var.schedule_time_zone
  region      = var.region

  pubsub_target {
    topic_name = google_pubsub_topic.jobs.id
    attributes = {
      job            = "secrets-backup"
      source         = "cloud-scheduler"
      "x-job-secret" = data.google_secret_manager_secret_version.job_secret.secret_data
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_scheduler_job" "cleanup_old_backups" {
  name        = "cleanup-old-backups"
  description = "Weekly, Sunday 05:00: apply the retention policies."
  schedule    = "0 5 * * 0"
  time_zone   = var.schedule_time_zone
  region      = var.region

  pubsub_target {
    topic_name = google_pubsub_topic.jobs.id
    attributes = {
      job            = "cleanup-old-backups"
      source         = "cloud-scheduler"
      "x-job-secret" = data.google_secret_manager_secret_version.job_secret.secret_data
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_scheduler_job" "documents_inventory" {
  name        = "documents-inventory"
  description = "Daily 03:00: manifest of every live object in the documents bucket."
  schedule    = "0 3 * * *"
  time_zone   = var.schedule_time_zone
  region      = var.region

  pubsub_target {
    topic_name = google_pubsub_topic.jobs.id
    attributes = {
      job            = "documents-inventory"
      source         = "cloud-scheduler"
      "x-job-secret" = data.google_secret_manager_secret_version.job_secret.secret_data
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloud_scheduler_job" "dr_drill" {
  name        = "dr-drill"
  description = "Monthly, 1st 06:00: full restore rehearsal."
  schedule    = "0 6 1 * *"
  time_zone   = var.schedule_time_zone
  region      = var.region

  pubsub_target {
    topic_name = google_pubsub_topic.jobs.id
    attributes = {
      job            = "dr-drill"
      source         = "cloud-scheduler"
      "x-job-secret" = data.google_secret_manager_secret_version.job_secret.secret_data
    }
  }

  depends_on = [google_project_service.apis]
}
