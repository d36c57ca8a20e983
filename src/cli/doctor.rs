//! `keshless-ops doctor`: checks the buckets' hardening settings.

use std::process::ExitCode;

use crate::documents::hardening::{self, Role, Status};

/// Check that the documents bucket has object versioning, enforced public
/// access prevention and uniform bucket-level access, and that the backups
/// bucket has object versioning. Exits 3 when a setting is missing (a
/// file:// store is reported as not applicable). Reads BACKUP_STORE and
/// DOCUMENTS_STORE (or GCS_BACKUPS_BUCKET / GCS_DOCUMENTS_BUCKET).
#[derive(Debug, clap::Args)]
pub struct DoctorCmd {
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
}

impl DoctorCmd {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Err(code) = super::check_environment("doctor") {
            return Ok(code);
        }
        let (backups, documents) = match super::open_backup_and_documents_stores().await? {
            Ok(stores) => stores,
            Err(code) => return Ok(code),
        };
        let mut lines = Vec::new();
        for (role, store) in [(Role::Documents, &documents), (Role::Backups, &backups)] {
            let settings = hardening::bucket_settings(store.as_ref()).await?;
            lines.extend(hardening::evaluate(
                role,
                &store.location().to_string(),
                settings.as_ref(),
            ));
        }
        let findings = lines.iter().filter(|line| line.status == Status::Finding).count();
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "findings": findings, "checks": lines }))?
            );
        } else {
            for line in &lines {
                let status = match line.status {
                    Status::Ok => "ok",
                    Status::Finding => "FINDING",
                    Status::NotApplicable => "n/a",
                };
                println!("{status:<8} {:<32} {}: {}", line.store, line.setting, line.detail);
            }
        }
        Ok(if findings > 0 {
            eprintln!("{findings} hardening finding(s)");
            ExitCode::from(super::exit::FINDINGS)
        } else {
            ExitCode::SUCCESS
        })
    }
}
