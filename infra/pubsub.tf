# The job pipeline (SPEC sections 3 and 4): Cloud Scheduler, gcloud, the CLI
# and the worker's HTTP endpoint publish to "backup-jobs"; the worker pulls
# "backup-jobs-worker"; after 5 failed deliveries Pub/Sub moves a message to
# "backup-jobs-dlq", where "backup-jobs-dlq-inspect" keeps it for
# `keshless-ops dlq list|replay`. The names are the defaults of src/config.rs
# (PUBSUB_TOPIC, PUBSUB_SUBSCRIPTION, PUBSUB_DLQ_TOPIC, PUBSUB_DLQ_SUBSCRIPTION)
# and the topology `keshless-ops emulator` creates locally.

resource "google_pubsub_topic" "jobs" {
  name = "backup-jobs"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letters" {
  name = "backup-jobs-dlq"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "worker" {
  name  = "backup-jobs-worker"
  topic = google_pubsub_topic.jobs.id

  # The longest deadline Pub/Sub allows. The worker also extends the deadline
  # on a timer while a job runs, so this only matters when a worker dies: its
  # message comes back after at most 10 minutes.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  # After the worker's own bounded retries (backon) it nacks; Pub/Sub then
  # redelivers with exponential backoff between these bounds.
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  # The 5th failed delivery goes to the DLQ. The worker is told the same limit
  # (PUBSUB_MAX_DELIVERY_ATTEMPTS in worker.tf) so it dead-letters the last
  # attempt itself, with the error attached, instead of leaving it to Pub/Sub.
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letters.id
    max_delivery_attempts = 5
  }

  # Never delete the subscription for inactivity (the default is 31 days).
  expiration_policy {
    ttl = ""
  }
}

# Dead letters are kept here until someone replays or acknowledges them.
# `keshless-ops dlq list` reads without consuming.
resource "google_pubsub_subscription" "dead_letters" {
  name  = "backup-jobs-dlq-inspect"
  topic = google_pubsub_topic.dead_letters.id

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering needs the Pub/Sub service agent to publish to the DLQ topic
# and to subscribe to the source subscription (to acknowledge the message it
# forwarded); without these, messages are redelivered forever.
locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letters.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  subscription = google_pubsub_subscription.worker.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
