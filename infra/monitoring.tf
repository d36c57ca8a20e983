# Alerting and the dashboard (SPEC sections 9 and 10): a backup that does not
# happen pages someone within its freshness window.
#
# Cloud Run does not scrape the worker's /metrics (Managed Service for
# Prometheus has a sidecar for Cloud Run services only), so everything here
# reads what Google records anyway: the worker's JSON log lines, turned into
# log-based metrics, and Pub/Sub's and Cloud Scheduler's own metrics and logs.
# The README's "Is the worker healthy?" says what each alert means and who it
# reaches; each policy's documentation names the runbook section and the
# first command. tests/infra.rs checks the windows, filters and references
# against the code.

# Every policy notifies every channel: one email channel per address in
# var.alert_emails, plus the existing channels (PagerDuty, Slack) listed in
# var.alert_notification_channels.
resource "google_monitoring_notification_channel" "email" {
  for_each = toset(var.alert_emails)

  display_name = "keshless-ops on-call: ${each.value}"
  type         = "email"
  labels = {
    email_address = each.value
  }

  depends_on = [google_project_service.apis]
}

locals {
  notification_channels = concat(
    [for channel in google_monitoring_notification_channel.email : channel.id],
    var.alert_notification_channels,
  )

  # The worker's own log entries.
  worker_logs = "resource.type=\"cloud_run_worker_pool\" AND resource.labels.worker_pool_name=\"${google_cloud_run_v2_worker_pool.worker.name}\""

  # The line every job run ends with (src/runtime/worker.rs: JOB_SUCCEEDED,
  # JOB_FAILED, JOB_INTERRUPTED), whose top-level fields are
  # JOB_OUTCOME_FIELDS: job, database, outcome, duration_seconds, bytes.
  job_outcome_lines = "${local.worker_logs} AND jsonPayload.message=(\"job succeeded\" OR \"job failed\" OR \"job interrupted\")"

  # PromQL's name for the outcome counter (logging.googleapis.com/user/NAME).
  job_outcomes_promql = "logging_googleapis_com:user_${google_logging_metric.job_outcomes.name}"

  # How old each scheduled job's newest success may be, in hours: the
  # defaults of `keshless-ops status` (src/schedule.rs, SCHEDULE max_age, which
  # FRESHNESS_<JOB>_HOURS overrides). Change both together.
  freshness_hours = {
    "postgres-backup"     = 26
    "secrets-backup"      = 192
    "cleanup-old-backups" = 192
    "documents-inventory" = 26
    "dr-drill"            = 840
  }

  # One freshness policy per scheduled job, and for postgres-backup one per
  # database it protects: a database whose backups stop while the others go
  # on must page too. `selector` is the PromQL label matcher of its successes.
  freshness_checks = merge(
    {
      for database in var.databases : "postgres-backup:${database}" => {
        job      = "postgres-backup"
        hours    = local.freshness_hours["postgres-backup"]
        selector = "job=\"postgres-backup\",database=\"${database}\""
      }
    },
    {
      for job, hours in local.freshness_hours : job => {
        job      = job
        hours    = hours
        selector = "job=\"${job}\""
      } if job != "postgres-backup"
    },
  )
}

# ---- log-based metrics ----

# Job runs, by job, database (empty for jobs without one) and outcome
# (succeeded, permanent, transient, interrupted): what the freshness alerts
# and the dashboard count.
resource "google_logging_metric" "job_outcomes" {
  name        = "keshless_ops_job_outcomes"
  description = "keshless-ops job runs by job, database and outcome (the worker's job succeeded/failed/interrupted lines)."
  filter      = local.job_outcome_lines

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "keshless-ops job runs"

    labels {
      key        = "job"
      value_type = "STRING"
    }
    labels {
      key        = "database"
      value_type = "STRING"
    }
    labels {
      key        = "outcome"
      value_type = "STRING"
    }
  }

  label_extractors = {
    job      = "EXTRACT(jsonPayload.job)"
    database = "EXTRACT(jsonPayload.database)"
    outcome  = "EXTRACT(jsonPayload.outcome)"
  }

  # Alerts that notify nobody make a backup system that fails silently.
  lifecycle {
    precondition {
      condition     = length(var.alert_emails) + length(var.alert_notification_channels) > 0
      error_message = "Set alert_emails or alert_notification_channels (infra/variables.tf): every alert policy notifies them, and without one a missed backup pages nobody."
    }
  }

  depends_on = [google_project_service.apis]
}

# How long runs take, by job and outcome.
resource "google_logging_metric" "job_duration_seconds" {
  name            = "keshless_ops_job_duration_seconds"
  description     = "keshless-ops job run durations in seconds, by job and outcome."
  filter          = local.job_outcome_lines
  value_extractor = "EXTRACT(jsonPayload.duration_seconds)"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "s"
    display_name = "keshless-ops job duration"

    labels {
      key        = "job"
      value_type = "STRING"
    }
    labels {
      key        = "outcome"
      value_type = "STRING"
    }
  }

  label_extractors = {
    job     = "EXTRACT(jsonPayload.job)"
    outcome = "EXTRACT(jsonPayload.outcome)"
  }

  # 1 s to ~6 days.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 20
      growth_factor      = 2
      scale              = 1
    }
  }

  depends_on = [google_project_service.apis]
}

# Size of what a successful run stored (postgres-backup: the dump, per
# database; secrets-backup: the weekly envelope).
resource "google_logging_metric" "backup_bytes" {
  name            = "keshless_ops_backup_bytes"
  description     = "Bytes a successful keshless-ops run stored, by job and database."
  filter          = "${local.job_outcome_lines} AND jsonPayload.outcome=\"succeeded\" AND jsonPayload.bytes>0"
  value_extractor = "EXTRACT(jsonPayload.bytes)"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "By"
    display_name = "keshless-ops backup size"

    labels {
      key        = "job"
      value_type = "STRING"
    }
    labels {
      key        = "database"
      value_type = "STRING"
    }
  }

  label_extractors = {
    job      = "EXTRACT(jsonPayload.job)"
    database = "EXTRACT(jsonPayload.database)"
  }

  # 1 KiB to ~1 PiB.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 40
      growth_factor      = 2
      scale              = 1024
    }
  }

  depends_on = [google_project_service.apis]
}

# ---- alert policies ----

# No success within the job's window. A metric-absence condition looks back
# at most 23.5 h, too short for a weekly or monthly job (and for 26 h), so
# this is PromQL: absent_over_time is 1 when the success counter of that job
# (and database) has no point in the whole window. A log-based counter writes
# points only when a matching line arrives, so "no point in 26 h" is "no
# success in 26 h". It also fires when a job never succeeded since the
# policy exists: a new installation pages until its first backups are done.
resource "google_monitoring_alert_policy" "freshness" {
  for_each = local.freshness_checks

  display_name = "keshless-ops: ${each.key} has not succeeded in ${each.value.hours} h"
  combiner     = "OR"
  severity     = "CRITICAL"

  conditions {
    display_name = "No successful ${each.key} run in ${each.value.hours} h"

    condition_prometheus_query_language {
      query               = "absent_over_time(${local.job_outcomes_promql}{monitored_resource=\"cloud_run_worker_pool\",outcome=\"succeeded\",${each.value.selector}}[${each.value.hours}h])"
      duration            = "0s"
      evaluation_interval = "300s"
    }
  }

  notification_channels = local.notification_channels

  documentation {
    mime_type = "text/markdown"
    subject   = "keshless-ops: ${each.key} overdue"
    content   = "No successful ${each.key} run in ${each.value.hours} h: the newest backup is older than its freshness window. Runbook: README.md, section \"Check freshness\". First command: `keshless-ops status`. Then see \"Is the worker healthy?\" and run the job by hand (\"Run a job now\")."
  }
}

# A message that could not be run is waiting in the dead-letter topic.
resource "google_monitoring_alert_policy" "dead_letters" {
  display_name = "keshless-ops: messages in the dead-letter topic"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "Dead-letter subscription holds a message for 5 min"

    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.dead_letters.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }

      trigger {
        count = 1
      }
    }
  }

  notification_channels = local.notification_channels

  documentation {
    mime_type = "text/markdown"
    subject   = "keshless-ops: dead letters waiting"
    content   = "A job message was dead-lettered (permanent error, invalid message, or retries exhausted); its job did not run. Runbook: README.md, section \"Something is in the dead-letter topic\". First command: `keshless-ops dlq list`. Dead letters are dropped after 7 days."
  }
}

# The worker subscription's oldest message has waited 2 h: no worker is
# pulling (down, crash-looping, wrong credentials) or one is stuck. A single
# job that really runs longer than 2 h also trips it.
resource "google_monitoring_alert_policy" "worker_stalled" {
  display_name = "keshless-ops: job messages wait over 2 h"
  combiner     = "OR"
  severity     = "CRITICAL"

  conditions {
    display_name = "Oldest unacked message on the worker subscription older than 2 h"

    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.worker.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = 7200
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }

      trigger {
        count = 1
      }
    }
  }

  notification_channels = local.notification_channels

  documentation {
    mime_type = "text/markdown"
    subject   = "keshless-ops: worker down or stuck"
    content   = "A job message has waited over 2 h on the worker subscription: no worker pulls it, or a job is stuck. Runbook: README.md, section \"Is the worker healthy?\". First command: `keshless-ops status`."
  }
}

# The monthly rehearsal found bad data: a restore that would fail for real.
resource "google_monitoring_alert_policy" "drill_failed" {
  display_name = "keshless-ops: the DR drill failed"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "dr-drill ended with a permanent failure"

    condition_matched_log {
      filter = "${local.worker_logs} AND jsonPayload.message=\"job failed\" AND jsonPayload.job=\"dr-drill\" AND jsonPayload.outcome=\"permanent\""
    }
  }

  # Log-match conditions need a rate limit; one drill a month needs little.
  alert_strategy {
    notification_rate_limit {
      period = "3600s"
    }
    auto_close = "604800s"
  }

  notification_channels = local.notification_channels

  documentation {
    mime_type = "text/markdown"
    subject   = "keshless-ops: DR drill failed"
    content   = "The DR drill failed on the data (checksum, row counts, secrets or documents): the backups it used would not restore cleanly. Runbook: README.md, section \"Run a drill\". First command: `keshless-ops drill`. The report is in drills/ and the dead-lettered message carries the failed step."
  }
}

# Cloud Scheduler could not publish a job message: the worker never hears of
# that run. (Every Cloud Scheduler job of the project; this configuration's
# are the ones it creates.)
resource "google_monitoring_alert_policy" "scheduler_failed" {
  display_name = "keshless-ops: Cloud Scheduler failed to publish a job"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "Cloud Scheduler attempt failed"

    condition_matched_log {
      filter = "resource.type=\"cloud_scheduler_job\" AND severity>=ERROR"
    }
  }

  alert_strategy {
    notification_rate_limit {
      period = "3600s"
    }
    auto_close = "86400s"
  }

  notification_channels = local.notification_channels

  documentation {
    mime_type = "text/markdown"
    subject   = "keshless-ops: a scheduled job was not published"
    content   = "Cloud Scheduler failed to publish a job message to backup-jobs (permissions, deleted topic, quota): that run did not happen. Runbook: README.md, section \"Is the worker healthy?\". First command: `gcloud logging read 'resource.type=\"cloud_scheduler_job\" AND severity>=ERROR' --freshness=1d --limit=10`. Then publish the missed job by hand (\"Run a job now\")."
  }
}

# ---- dashboard ----

# Job outcomes and durations per job, backup size per database, dead-letter
# depth, age of the newest success per job (dashboard.json; its metrics are
# the ones above and the Pub/Sub metrics the alerts watch).
resource "google_monitoring_dashboard" "operations" {
  dashboard_json = file("${path.module}/dashboard.json")

  depends_on = [
    google_logging_metric.job_outcomes,
    google_logging_metric.job_duration_seconds,
    google_logging_metric.backup_bytes,
  ]
}
