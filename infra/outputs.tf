output "worker_service_account" {
  description = "Email of the worker's service account."
  value       = google_service_account.worker.email
}

output "jobs_topic" {
  description = "Topic to publish jobs to (PUBSUB_TOPIC)."
  value       = google_pubsub_topic.jobs.name
}

output "dead_letter_subscription" {
  description = "Subscription `keshless-ops dlq list|replay` reads (PUBSUB_DLQ_SUBSCRIPTION)."
  value       = google_pubsub_subscription.dead_letters.name
}

output "backups_bucket" {
  value = google_storage_bucket.backups.name
}

output "vault_project" {
  description = "Project of the vault (the backups bucket); equal to the main project only in development."
  value       = google_storage_bucket.backups.project
}

output "documents_bucket" {
  value = google_storage_bucket.documents.name
}

output "worker_pool" {
  value = google_cloud_run_v2_worker_pool.worker.name
}
