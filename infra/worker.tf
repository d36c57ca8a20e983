# The worker: `keshless-ops worker` (the image's default CMD) on a Cloud Run
# worker pool, the Cloud Run resource made for pull subscribers: no request
# path, CPU always allocated, a fixed number of instances (scaling below).
#
# Shutdown. Cloud Run sends SIGTERM and kills the container 10 seconds later
# (container runtime contract); neither this resource nor a Cloud Run service
# has a setting to lengthen that, so there is no termination grace period to
# set here. The worker is fitted into those 10 s instead: running jobs get
# SHUTDOWN_GRACE_SECONDS = 7 to finish, then are interrupted, their messages
# nacked and their ledger keys released (the remaining 3 s), so the next
# instance takes them at once. A backup cut off this way is retried from the
# start (a new pg_dump; the cut-off upload never became an object); nothing
# is lost, it only takes longer. tests/infra.rs keeps
# SHUTDOWN_GRACE_SECONDS + 3 s within the 10 s.
#
# Alternative, where worker pools are not available: a Cloud Run service
# running the same container, with CPU always allocated and one instance that
# never scales to zero, so the StreamingPull stays open between requests:
#
#   resource "google_cloud_run_v2_service" "worker" {
#     name     = "keshless-ops-worker"
#     location = var.region
#     ingress  = "INGRESS_TRAFFIC_INTERNAL_ONLY"
#     template {
#       service_account = google_service_account.worker.email
#       scaling {
#         min_instance_count = 1
#         max_instance_count = 1
#       }
#       containers {
#         image = var.image
#         resources {
#           cpu_idle = false # CPU always allocated
#         }
#         # the same env blocks as below
#       }
#     }
#   }
#
# A service also gives `POST /backup-jobs/{job}` a URL (the worker pool has no
# ingress: there, use gcloud or `keshless-ops publish` to trigger a job).

resource "google_cloud_run_v2_worker_pool" "worker" {
  name     = "keshless-ops-worker"
  location = var.region

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = var.worker_instances
  }

  # The worker would refuse to start (BACKUP_ENCRYPTION=required): say so at plan time.
  lifecycle {
    precondition {
      condition     = var.backup_encryption != "required" || length(var.backup_encryption_recipients) > 0
      error_message = "backup_encryption is required but backup_encryption_recipients is empty: list the age public keys (age1...) every dump is encrypted to, including an offline break-glass key."
    }
  }

  template {
    service_account = google_service_account.worker.email

    containers {
      image = var.image
      args  = ["worker"]

      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
      }

      # SPEC section 5, required.
      env {
        name = "JOB_SECRET"
        value_source {
          secret_key_ref {
            secret = google_secret_manager_secret.job_secret.secret_id
            # The version the scheduler jobs carry (scheduler.tf), not
            # "latest": Cloud Run reads a secret when an instance starts, so
            # after a rotation workers and scheduler would disagree until
            # both were redeployed, and every scheduled message would be
            # refused as forged. Pinned, one `terraform apply` moves both.
            version = data.google_secret_manager_secret_version.job_secret.version
          }
        }
      }
      env {
        name = "SECRETS_ENCRYPTION_KEY"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.secrets_encryption_key.secret_id
            version = "latest"
          }
        }
      }
      env {
        name = "DATABASE_URL"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.database_url.secret_id
            version = "latest"
          }
        }
      }
      env {
        # The databases postgres-backup may back up on the DATABASE_URL server.
        name  = "DATABASES"
        value = join(",", var.databases)
      }
      # Dumps (SPEC section 8): zstd in the worker, encrypted to age public
      # keys; without recipients the worker refuses to start.
      env {
        name  = "BACKUP_COMPRESSION"
        value = var.backup_compression
      }
      env {
        name  = "BACKUP_ENCRYPTION"
        value = var.backup_encryption
      }
      env {
        name  = "BACKUP_ENCRYPTION_RECIPIENTS"
        value = join(",", var.backup_encryption_recipients)
      }
      env {
        # The drill's identity, read through the API when a drill restores.
        name  = "BACKUP_AGE_IDENTITY_SECRET"
        value = google_secret_manager_secret.backup_age_identity.secret_id
      }
      env {
        name  = "GCS_BACKUPS_BUCKET"
        value = google_storage_bucket.backups.name
      }
      env {
        name  = "GCS_DOCUMENTS_BUCKET"
        value = google_storage_bucket.documents.name
      }

      # Pub/Sub: the resources of pubsub.tf, and its dead-letter limit.
      env {
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project
      }
      env {
        # The full drill's scratch targets (drill.tf); empty: not set up.
        name  = "DRILL_SECRET_MANAGER_PROJECT"
        value = var.drill_scratch_project
      }
      env {
        name  = "DRILL_DOCUMENTS_STORE"
        value = local.drill_documents_store
      }
      env {
        name  = "PUBSUB_TOPIC"
        value = google_pubsub_topic.jobs.name
      }
      env {
        name  = "PUBSUB_SUBSCRIPTION"
        value = google_pubsub_subscription.worker.name
      }
      env {
        name  = "PUBSUB_DLQ_TOPIC"
        value = google_pubsub_topic.dead_letters.name
      }
      env {
        name  = "PUBSUB_DLQ_SUBSCRIPTION"
        value = google_pubsub_subscription.dead_letters.name
      }
      env {
        name  = "PUBSUB_MAX_DELIVERY_ATTEMPTS"
        value = "5"
      }

      # The same zone as the scheduler jobs: idempotency periods depend on it.
      env {
        name  = "SCHEDULE_TIME_ZONE"
        value = var.schedule_time_zone
      }
      env {
        name  = "SHUTDOWN_GRACE_SECONDS"
        value = "7"
      }

      # What secrets-backup protects: every Secret Manager secret of the
      # project (GOOGLE_CLOUD_PROJECT above) with its metadata and versions,
      # optionally narrowed by var.secrets_filter, plus the regional secrets
      # of var.secrets_locations (iam.tf grants the reads).
      env {
        name  = "SECRETS_SOURCE"
        value = "secret-manager"
      }
      env {
        name  = "SECRETS_FILTER"
        value = var.secrets_filter
      }
      env {
        name  = "SECRETS_LOCATIONS"
        value = var.secrets_locations
      }
      env {
        name  = "RUST_LOG"
        value = "info"
      }

      liveness_probe {
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
        http_get {
          path = "/healthz"
          port = 8080
        }
      }

      dynamic "volume_mounts" {
        for_each = var.cloud_sql_instance == "" ? [] : [var.cloud_sql_instance]
        content {
          name       = "cloudsql"
          mount_path = "/cloudsql"
        }
      }
    }

    # With a Cloud SQL instance, DATABASE_URL reaches it through the socket:
    # postgres://USER:PASSWORD@/DATABASE?host=/cloudsql/PROJECT:REGION:INSTANCE
    dynamic "volumes" {
      for_each = var.cloud_sql_instance == "" ? [] : [var.cloud_sql_instance]
      content {
        name = "cloudsql"
        cloud_sql_instance {
          instances = [volumes.value]
        }
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.worker_job_secret,
    google_secret_manager_secret_iam_member.worker_secrets_encryption_key,
    google_secret_manager_secret_iam_member.worker_database_url,
    google_project_iam_member.worker_secret_manager_viewer,
    google_project_iam_member.worker_secret_manager_accessor,
  ]
}
