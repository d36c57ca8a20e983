//! `keshless-ops documents`: checks of the documents store against its inventories.

use std::process::ExitCode;

use chrono::NaiveDate;

/// Inspect the documents store.
#[derive(Debug, clap::Subcommand)]
pub enum DocumentsCmd {
    /// Compare the documents store with an inventory and report objects that are
    /// missing or changed (objects created since are counted, not reported).
    /// Exits 3 when anything is missing or changed. Reads BACKUP_STORE and
    /// DOCUMENTS_STORE (or GCS_BACKUPS_BUCKET / GCS_DOCUMENTS_BUCKET).
    Check {
        /// Inventory date (YYYY-MM-DD); default: the newest complete inventory.
        #[arg(long)]
        inventory: Option<NaiveDate>,
        /// Only objects whose name starts with this, e.g. kyc/.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl DocumentsCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let DocumentsCmd::Check {
            inventory,
            prefix,
            json,
        } = self;
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
