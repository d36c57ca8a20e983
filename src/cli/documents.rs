//! `keshless-ops documents`: checks of the documents store against its
//! inventories, and signed URLs for single documents.

use std::process::ExitCode;

use chrono::NaiveDate;

use crate::documents::signed_url::{self, Endpoint, Method};

/// Inspect the documents store.
#[derive(Debug, clap::Subcommand)]
pub enum DocumentsCmd {
    /// Compare the documents store with an inventory and report objects that are
    /// missing or changed (objects created since are counted, not reported).
    /// Exits 3 when anything is missing or changed. Reads BACKUP_STORE and
    /// DOCUMENTS_STORE (or GCS_BACKUPS_BUCKET / GCS_DOCUMENTS_BUCKET).
    Check {
        /// Inventory date (YYYY-MM-DD); default: the newest complete inventory.
        #[arg(long, value_parser = super::parse_date)]
        inventory: Option<NaiveDate>,
        /// Only objects whose name starts with this, e.g. kyc/.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A time-limited V4 signed URL for one document, the only way documents
    /// are handed out. At most 7 days (604800 s; longer is clamped, and said).
    /// Signed with the service account key file in
    /// GOOGLE_APPLICATION_CREDENTIALS, else through IAM signBlob as
    /// SIGNING_SERVICE_ACCOUNT or, on Cloud Run, the runtime service account.
    /// Prints the URL alone; logs who asked for which document and until
    /// when, never the URL. Reads DOCUMENTS_STORE (or GCS_DOCUMENTS_BUCKET).
    Url {
        /// The document's object name, e.g. kyc/u-1/passport.jpg.
        name: String,
        /// That generation of it (a versioned bucket keeps the old ones); default the live one.
        #[arg(long)]
        generation: Option<i64>,
        /// How long the URL works: seconds, or with s, m, h or d (15m, 2h, 7d).
        #[arg(long, default_value = "15m", value_parser = signed_url::parse_expiry)]
        expires: u64,
        /// What the URL allows.
        #[arg(long, value_enum, default_value_t = Method::Get)]
        method: Method,
        /// Print JSON (the URL, its expiry, the generation, who signed).
        #[arg(long)]
        json: bool,
    },
}

impl DocumentsCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let command = match &self {
            DocumentsCmd::Check { .. } => "documents check",
            DocumentsCmd::Url { .. } => "documents url",
        };
        if let Err(code) = super::check_environment(command) {
            return Ok(code);
        }
        let (inventory, prefix, json) = match self {
            DocumentsCmd::Check {
                inventory,
                prefix,
                json,
            } => (inventory, prefix, json),
            DocumentsCmd::Url {
                name,
                generation,
                expires,
                method,
                json,
            } => return url(&name, generation, expires, method, json).await,
        };
        let (backups, documents) = match super::open_backup_and_documents_stores().await? {
            Ok(stores) => stores,
            Err(code) => return Ok(code),
        };
        let report =
            crate::documents::check::run(backups.as_ref(), documents.as_ref(), inventory, &prefix, None).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for finding in &report.findings {
                let problem = serde_json::to_value(finding.problem)?;
                println!(
                    "{:<8} {} @{}",
                    problem.as_str().unwrap_or_default(),
                    finding.name,
                    finding.generation
                );
            }
            if report.findings_truncated {
                println!("(only the first {} findings are listed)", report.findings.len());
            }
            println!(
                "inventory {}: unchanged {}, missing {}, changed {}, added since {}",
                report.inventory_date, report.unchanged, report.missing, report.changed, report.added
            );
        }
        Ok(if report.has_findings() {
            ExitCode::from(super::exit::FINDINGS)
        } else {
            ExitCode::SUCCESS
        })
    }
}

async fn url(
    name: &str,
    generation: Option<i64>,
    expires: u64,
    method: Method,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let location = match super::documents_store_location() {
        Ok(location) => location,
        Err(problem) => {
            eprintln!("invalid configuration (1 problem):\n  - {problem}");
            return Ok(ExitCode::from(super::exit::CONFIG));
        }
    };
    let emulator = super::variable("STORAGE_EMULATOR_HOST");
    let documents = crate::storage::open(&location, emulator.as_deref()).await?;
    let signer = match signer().await {
        Ok(signer) => signer,
        Err(error) => {
            eprintln!("cannot sign: {error:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let issued = match signed_url::issue(
        documents.as_ref(),
        signer.as_ref(),
        &Endpoint::for_emulator(emulator.as_deref()),
        name,
        generation,
        method,
        expires,
        super::operator().as_deref(),
        chrono::Utc::now(),
    )
    .await
    {
        Ok(issued) => issued,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(asked) = issued.clamped_from_seconds {
        eprintln!(
            "note: --expires {asked} s is more than Cloud Storage allows; clamped to {} s (7 days)",
            signed_url::MAXIMUM_EXPIRY_SECONDS
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&issued)?);
    } else {
        println!("{}", issued.url);
        eprintln!(
            "{} {} (generation {}), valid until {}, signed by {}",
            issued.method.as_str(),
            issued.name,
            issued
                .generation
                .map(|generation| generation.to_string())
                .unwrap_or_else(|| "-".into()),
            issued.expires_at.to_rfc3339(),
            issued.signed_by
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The service account key in GOOGLE_APPLICATION_CREDENTIALS, else IAM
/// signBlob as SIGNING_SERVICE_ACCOUNT or the metadata server's account.
async fn signer() -> anyhow::Result<Box<dyn signed_url::Signer>> {
    use anyhow::Context as _;
    if let Some(path) = super::variable("GOOGLE_APPLICATION_CREDENTIALS") {
        let bytes =
            std::fs::read(&path).with_context(|| format!("GOOGLE_APPLICATION_CREDENTIALS: cannot read {path}"))?;
        let kind = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|value| value["type"].as_str().map(str::to_owned));
        if kind.as_deref() == Some("service_account") {
            let signer = signed_url::KeySigner::from_json(&bytes)
                .with_context(|| format!("GOOGLE_APPLICATION_CREDENTIALS ({path})"))?;
            return Ok(Box::new(signer));
        }
    }
    let email = match super::variable("SIGNING_SERVICE_ACCOUNT") {
        Some(email) => email,
        None => metadata_service_account().await.context(
            "no service account to sign as: set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or \
             SIGNING_SERVICE_ACCOUNT to an account you may sign as (roles/iam.serviceAccountTokenCreator), or run on \
             Cloud Run",
        )?,
    };
    let tokens = signed_url::DefaultCredentials::new()?;
    Ok(Box::new(signed_url::IamSigner::new(
        signed_url::IAM_CREDENTIALS_ENDPOINT,
        &email,
        Box::new(tokens),
    )?))
}

/// The runtime service account's email, from the metadata server.
async fn metadata_service_account() -> anyhow::Result<String> {
    let host = super::variable("GCE_METADATA_HOST").unwrap_or_else(|| "metadata.google.internal".into());
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?
        .get(format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/default/email"
        ))
        .header("Metadata-Flavor", "Google")
        .send()
        .await?
        .error_for_status()?;
    Ok(response.text().await?.trim().to_owned())
}
