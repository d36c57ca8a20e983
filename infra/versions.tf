# Terraform and provider versions. The google provider is pinned to one major:
# google_cloud_run_v2_worker_pool (worker.tf) is GA from 6.38 on, and a new
# major may rename arguments this configuration relies on.
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

# The project number names the Pub/Sub service agent (pubsub.tf).
data "google_project" "this" {
  project_id = var.project
}

# The APIs everything below uses. Disabling them on destroy would break other
# users of the project, so destroy leaves them on.
resource "google_project_service" "apis" {
  for_each = toset([
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    # IAM signBlob: `keshless-ops documents url` signs as the worker's own
    # service account on Cloud Run, where there is no key file.
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "sqladmin.googleapis.com",
    "storage.googleapis.com",
  ])

  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

locals {
  # The project the vault (the backups bucket) is in; var.project only when
  # vault_project is left empty, which is for development only.
  vault_project = var.vault_project != "" ? var.vault_project : var.project
}

# Cloud Storage in the vault project (already on when the vault is var.project).
resource "google_project_service" "vault_storage" {
  count = local.vault_project == var.project ? 0 : 1

  project            = local.vault_project
  service            = "storage.googleapis.com"
  disable_on_destroy = false
}
