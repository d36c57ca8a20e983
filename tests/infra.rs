//! `infra/*.tf` checked against the code it deploys (issue #10): Terraform
//! cannot run here, so these tests parse the configuration with `hcl-rs` and
//! compare it with what the worker assumes — the schedule table, Pub/Sub
//! names and limits, the environment the config reads, the retention the
//! cleanup job applies — and check that every command of the README's
//! operations runbook is one the CLI accepts. Each failure names the file's
//! resource and the mismatch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use clap::Parser as _;
use hcl::{Block, Body, Expression, ObjectKey, TraversalOperator};
use keshless_ops::config::{Config, MessagingConfig, PubSubConfig, RetentionConfig};
use keshless_ops::schedule::SCHEDULE;

/// Seconds Cloud Run leaves between SIGTERM and SIGKILL (container runtime
/// contract); not configurable on a worker pool or a service.
const CLOUD_RUN_SIGTERM_TO_SIGKILL_SECONDS: u64 = 10;
/// What the worker needs after its grace period: interrupt jobs, nack, release keys.
const SHUTDOWN_MARGIN_SECONDS: u64 = 3;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `infra/*.tf` file, parsed; blocks keep the file they came from.
struct Infra {
    blocks: Vec<(String, Block)>,
}

impl Infra {
    fn load() -> Infra {
        let directory = repository().join("infra");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", directory.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "tf"))
            .collect();
        paths.sort();
        assert!(!paths.is_empty(), "no .tf files in {}", directory.display());
        let mut blocks = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).expect("read .tf file");
            let body = hcl::parse(&text).unwrap_or_else(|error| panic!("{} is not valid HCL: {error}", path.display()));
            let file = path.file_name().expect("file name").to_string_lossy().into_owned();
            assert!(
                body.attributes().next().is_none(),
                "{file}: top-level attributes are not valid Terraform"
            );
            blocks.extend(body.into_blocks().map(|block| (file.clone(), block)));
        }
        Infra { blocks }
    }

    /// `resource "KIND" "NAME"` (or `data`) blocks of one kind, by name.
    fn all(&self, identifier: &str, kind: &str) -> BTreeMap<String, &Body> {
        self.blocks
            .iter()
            .filter(|(_, block)| block.identifier() == identifier && label(block, 0) == Some(kind))
            .map(|(_, block)| (label(block, 1).expect("resource name").to_owned(), block.body()))
            .collect()
    }

    fn resources(&self, kind: &str) -> BTreeMap<String, &Body> {
        self.all("resource", kind)
    }

    fn resource(&self, kind: &str, name: &str) -> &Body {
        self.resources(kind)
            .remove(name)
            .unwrap_or_else(|| panic!("infra/ has no resource \"{kind}\" \"{name}\""))
    }

    fn variable_default(&self, name: &str) -> Option<String> {
        let body = self.all_unlabelled_kind("variable", name)?;
        attribute(body, "default").map(|expression| self.resolve(expression))
    }

    fn all_unlabelled_kind(&self, identifier: &str, name: &str) -> Option<&Body> {
        self.blocks
            .iter()
            .find(|(_, block)| block.identifier() == identifier && label(block, 0) == Some(name))
            .map(|(_, block)| block.body())
    }

    fn local(&self, name: &str) -> &Expression {
        self.blocks
            .iter()
            .filter(|(_, block)| block.identifier() == "locals")
            .find_map(|(_, block)| attribute(block.body(), name))
            .unwrap_or_else(|| panic!("infra/ has no local.{name}"))
    }

    /// The value an expression has under the variables' defaults, as far as
    /// a test can know it: literals, `var.X`, `local.X` and `KIND.NAME.ATTR`
    /// references to literal attributes. Anything else is `<expression>`.
    fn resolve(&self, expression: &Expression) -> String {
        if let Some(text) = literal(expression) {
            return text;
        }
        let Some(path) = reference(expression) else {
            return format!("<{expression:?}>");
        };
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        match path.as_slice() {
            ["var", name] => self.variable_default(name).unwrap_or_else(|| format!("<var.{name}>")),
            ["local", name] => self.resolve(self.local(name)),
            [kind, name, attribute_name] if kind.starts_with("google_") => {
                match attribute(self.resource(kind, name), attribute_name) {
                    Some(value) => self.resolve(value),
                    None => format!("<{kind}.{name}.{attribute_name}>"),
                }
            }
            _ => format!("<{}>", path.join(".")),
        }
    }

    /// The resource a `KIND.NAME.ATTR` reference points at, checked to exist.
    fn referenced<'a>(&'a self, expression: &Expression, kind: &str, attribute_name: &str) -> (String, &'a Body) {
        let path =
            reference(expression).unwrap_or_else(|| panic!("expected a reference to a {kind}, found {expression:?}"));
        match path.as_slice() {
            [found_kind, name, found_attribute] if found_kind == kind && found_attribute == attribute_name => {
                (name.clone(), self.resource(kind, name))
            }
            _ => panic!("expected {kind}.NAME.{attribute_name}, found {}", path.join(".")),
        }
    }
}

fn label(block: &Block, index: usize) -> Option<&str> {
    block.labels().get(index).map(|label| label.as_str())
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|attribute| attribute.key() == key)
        .map(|attribute| attribute.expr())
}

fn required<'a>(body: &'a Body, key: &str, what: &str) -> &'a Expression {
    attribute(body, key).unwrap_or_else(|| panic!("{what} has no `{key}`"))
}

fn blocks<'a>(body: &'a Body, identifier: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |block| block.identifier() == identifier)
}

fn only_block<'a>(body: &'a Body, identifier: &'a str, what: &str) -> &'a Body {
    let found: Vec<&Block> = blocks(body, identifier).collect();
    assert_eq!(found.len(), 1, "{what} must have exactly one `{identifier}` block");
    found[0].body()
}

/// A literal string, number or bool, as text.
fn literal(expression: &Expression) -> Option<String> {
    match expression {
        Expression::String(text) => Some(text.clone()),
        Expression::Number(number) => Some(number.to_string()),
        Expression::Bool(value) => Some(value.to_string()),
        _ => None,
    }
}

fn literal_string(expression: &Expression, what: &str) -> String {
    literal(expression).unwrap_or_else(|| panic!("{what} must be a literal, found {expression:?}"))
}

fn number(expression: &Expression, what: &str) -> i64 {
    match expression {
        Expression::Number(number) => number
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: {number} is not whole")),
        other => panic!("{what} must be a literal number, found {other:?}"),
    }
}

/// `a.b.c` as `["a", "b", "c"]`; `None` for anything but a plain reference.
fn reference(expression: &Expression) -> Option<Vec<String>> {
    match expression {
        Expression::Variable(variable) => Some(vec![variable.to_string()]),
        Expression::Traversal(traversal) => {
            let mut path = reference(&traversal.expr)?;
            for operator in &traversal.operators {
                match operator {
                    TraversalOperator::GetAttr(name) => path.push(name.to_string()),
                    _ => return None,
                }
            }
            Some(path)
        }
        _ => None,
    }
}

fn is_reference(expression: &Expression, expected: &str) -> bool {
    reference(expression).is_some_and(|path| path.join(".") == expected)
}

/// What a `google_project_iam_member` grants: a predefined role, or the
/// permissions of one of our custom roles (`google_project_iam_custom_role.NAME[0].id`).
#[derive(Debug)]
enum Granted {
    Predefined(String),
    Custom {
        name: String,
        permissions: BTreeSet<String>,
    },
}

impl Granted {
    fn of(infra: &Infra, binding: &Body, what: &str) -> Granted {
        let role = required(binding, "role", what);
        if let Some(role) = literal(role) {
            return Granted::Predefined(role);
        }
        let text = hcl::format::to_string(role).unwrap();
        let name = text
            .strip_prefix("google_project_iam_custom_role.")
            .and_then(|rest| rest.strip_suffix(".id"))
            .map(|name| name.strip_suffix("[0]").unwrap_or(name))
            .unwrap_or_else(|| panic!("{what}: role must be a literal or a custom role's id, found {text}"));
        let body = infra.resource("google_project_iam_custom_role", name);
        let Expression::Array(items) = required(body, "permissions", name) else {
            panic!("google_project_iam_custom_role.{name}: permissions must be a list");
        };
        Granted::Custom {
            name: name.to_owned(),
            permissions: items.iter().map(|item| literal_string(item, "permission")).collect(),
        }
    }
}

/// An object's entries with their keys as text (`job`, `"x-job-secret"` alike).
fn object_entries(expression: &Expression, what: &str) -> BTreeMap<String, Expression> {
    let Expression::Object(object) = expression else {
        panic!("{what} must be an object, found {expression:?}");
    };
    object
        .iter()
        .map(|(key, value)| {
            let key = match key {
                ObjectKey::Identifier(identifier) => identifier.to_string(),
                ObjectKey::Expression(expression) => literal_string(expression, &format!("a key of {what}")),
                other => panic!("{what}: unexpected key {other:?}"),
            };
            (key, value.clone())
        })
        .collect()
}

/// Pub/Sub names and limits as the code defaults them.
fn code_pubsub() -> PubSubConfig {
    MessagingConfig::from_vars([("JOB_SECRET", "x")])
        .expect("defaults are valid")
        .pubsub
}

/// A Pub/Sub duration like "600s", in seconds.
fn duration_seconds(text: &str, what: &str) -> f64 {
    text.strip_suffix('s')
        .and_then(|number| number.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{what}={text:?} is not a duration like \"600s\""))
}

fn secret_id_of(infra: &Infra, expression: &Expression) -> String {
    let (name, body) = infra.referenced(expression, "google_secret_manager_secret", "id");
    literal_string(
        required(body, "secret_id", &format!("google_secret_manager_secret.{name}")),
        "secret_id",
    )
}

// ---------------------------------------------------------------- scheduler

#[test]
fn every_scheduled_job_has_one_scheduler_job_with_its_cron_time_zone_and_attributes() {
    let infra = Infra::load();
    let jobs_topic = code_pubsub().topic;
    let scheduler_jobs = infra.resources("google_cloud_scheduler_job");

    let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, body) in &scheduler_jobs {
        let what = format!("google_cloud_scheduler_job.{name}");
        let target = only_block(body, "pubsub_target", &what);
        let attributes = object_entries(
            required(target, "attributes", &format!("{what}.pubsub_target")),
            &format!("{what}.pubsub_target.attributes"),
        );
        let job = attributes
            .get("job")
            .map(|expression| literal_string(expression, &format!("{what}: attribute job")))
            .unwrap_or_else(|| panic!("{what}: the message has no `job` attribute"));
        by_job.entry(job).or_default().push(name.clone());
    }

    for row in SCHEDULE {
        let names = by_job.get(row.job).cloned().unwrap_or_default();
        assert_eq!(
            names.len(),
            1,
            "schedule row {:?} ({}) must have exactly one Cloud Scheduler job in infra/scheduler.tf, found {names:?}",
            row.job,
            row.cron
        );
        let name = &names[0];
        let what = format!("google_cloud_scheduler_job.{name} (job {})", row.job);
        let body = scheduler_jobs[name];

        let schedule = literal_string(required(body, "schedule", &what), &format!("{what}: schedule"));
        assert_eq!(
            schedule, row.cron,
            "{what}: cron {schedule:?} differs from src/schedule.rs {:?}",
            row.cron
        );
        assert!(
            is_reference(required(body, "time_zone", &what), "var.schedule_time_zone"),
            "{what}: time_zone must be var.schedule_time_zone, the variable the worker's SCHEDULE_TIME_ZONE reads"
        );

        let target = only_block(body, "pubsub_target", &what);
        let (topic, topic_body) = infra.referenced(required(target, "topic_name", &what), "google_pubsub_topic", "id");
        let topic_name = literal_string(required(topic_body, "name", &topic), "topic name");
        assert_eq!(
            topic_name, jobs_topic,
            "{what} publishes to {topic_name:?}, the worker's PUBSUB_TOPIC is {jobs_topic:?}"
        );

        let attributes = object_entries(required(target, "attributes", &what), &what);
        let keys: BTreeSet<&str> = attributes.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["job", "source", "x-job-secret"]),
            "{what}: attributes must be exactly job, source, x-job-secret"
        );
        assert_eq!(
            literal_string(&attributes["source"], "source"),
            "cloud-scheduler",
            "{what}: source must be cloud-scheduler (the worker keys scheduled runs by period only then)"
        );

        // x-job-secret comes from the JOB_SECRET secret's current version.
        let secret = reference(&attributes["x-job-secret"])
            .unwrap_or_else(|| panic!("{what}: x-job-secret must reference Secret Manager, not a literal"));
        let [data, kind, data_name, field] = secret.as_slice() else {
            panic!("{what}: x-job-secret must be data.google_secret_manager_secret_version.NAME.secret_data, found {secret:?}");
        };
        assert_eq!(
            (data.as_str(), kind.as_str(), field.as_str()),
            ("data", "google_secret_manager_secret_version", "secret_data"),
            "{what}: x-job-secret must be data.google_secret_manager_secret_version.NAME.secret_data"
        );
        let version = infra
            .all("data", "google_secret_manager_secret_version")
            .remove(data_name.as_str())
            .unwrap_or_else(|| panic!("{what}: no data \"google_secret_manager_secret_version\" \"{data_name}\""));
        assert_eq!(
            secret_id_of(&infra, required(version, "secret", data_name)),
            "JOB_SECRET",
            "{what}: x-job-secret must be read from the JOB_SECRET secret"
        );
    }
}

/// Cloud Run reads a secret when an instance starts. With the worker on
/// "latest" and the scheduler jobs on the version Terraform read, a rotation
/// makes them disagree until both are redeployed, and the worker refuses every
/// scheduled message as forged: the worker must read the scheduler's version.
#[test]
fn the_worker_reads_the_job_secret_version_the_scheduler_jobs_carry() {
    let infra = Infra::load();
    let pools = infra.resources("google_cloud_run_v2_worker_pool");
    let (name, pool) = pools.into_iter().next().expect("one worker pool");
    let container = only_block(only_block(pool, "template", &name), "containers", &name);
    let env = blocks(container, "env")
        .find(|env| literal(required(env.body(), "name", "env")).as_deref() == Some("JOB_SECRET"))
        .expect("the worker pool sets JOB_SECRET");
    let secret_key_ref = only_block(
        only_block(env.body(), "value_source", "JOB_SECRET"),
        "secret_key_ref",
        "JOB_SECRET",
    );
    let version = required(secret_key_ref, "version", "JOB_SECRET");
    let traversal = reference(version).unwrap_or_else(|| {
        panic!("JOB_SECRET: version must be the scheduler's data.google_secret_manager_secret_version.NAME.version, not {version:?}")
    });
    let [data, kind, data_name, field] = traversal.as_slice() else {
        panic!(
            "JOB_SECRET: version must be data.google_secret_manager_secret_version.NAME.version, found {traversal:?}"
        );
    };
    assert_eq!(
        (data.as_str(), kind.as_str(), field.as_str()),
        ("data", "google_secret_manager_secret_version", "version"),
        "JOB_SECRET: version must be data.google_secret_manager_secret_version.NAME.version"
    );
    // The very data source every scheduler job's x-job-secret reads.
    for (job, body) in infra.resources("google_cloud_scheduler_job") {
        let target = only_block(body, "pubsub_target", &job);
        let attributes = object_entries(required(target, "attributes", &job), &job);
        let secret = reference(&attributes["x-job-secret"]).expect("a reference");
        assert_eq!(
            &secret[2], data_name,
            "{job}: x-job-secret and the worker's JOB_SECRET read different versions"
        );
    }
}

#[test]
fn no_scheduler_job_fires_a_job_outside_the_schedule() {
    let infra = Infra::load();
    let scheduled: BTreeSet<&str> = SCHEDULE.iter().map(|row| row.job).collect();
    for (name, body) in infra.resources("google_cloud_scheduler_job") {
        let target = only_block(body, "pubsub_target", &name);
        let attributes = object_entries(required(target, "attributes", &name), &name);
        let job = literal_string(&attributes["job"], "job");
        assert!(
            scheduled.contains(job.as_str()),
            "google_cloud_scheduler_job.{name} fires {job:?}, which is not in src/schedule.rs SCHEDULE {scheduled:?}"
        );
    }
}

// ---------------------------------------------------------------- Pub/Sub

#[test]
fn worker_subscription_has_the_deadline_retry_and_dead_letter_policy_the_worker_assumes() {
    let infra = Infra::load();
    let code = code_pubsub();
    let subscriptions = infra.resources("google_pubsub_subscription");
    let (name, body) = subscriptions
        .iter()
        .find(|(_, body)| attribute(body, "name").and_then(literal).as_deref() == Some(code.subscription.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "no subscription named {:?} (PUBSUB_SUBSCRIPTION default)",
                code.subscription
            )
        });
    let what = format!("google_pubsub_subscription.{name}");

    let (topic, topic_body) = infra.referenced(required(body, "topic", &what), "google_pubsub_topic", "id");
    assert_eq!(
        literal_string(required(topic_body, "name", &topic), "name"),
        code.topic,
        "{what} must subscribe to the jobs topic {:?}",
        code.topic
    );

    let ack_deadline = number(required(body, "ack_deadline_seconds", &what), "ack_deadline_seconds");
    assert_eq!(
        ack_deadline, 600,
        "{what}: ack_deadline_seconds must be 600 (issue #10)"
    );
    assert!(
        keshless_ops::emulator::policy::ACK_DEADLINE_RANGE_SECONDS.contains(&(ack_deadline as i32)),
        "{what}: ack deadline {ack_deadline} is outside what Pub/Sub accepts"
    );

    let retry = only_block(body, "retry_policy", &what);
    let minimum = duration_seconds(
        &literal_string(required(retry, "minimum_backoff", &what), "minimum_backoff"),
        "minimum_backoff",
    );
    let maximum = duration_seconds(
        &literal_string(required(retry, "maximum_backoff", &what), "maximum_backoff"),
        "maximum_backoff",
    );
    assert!(
        0.0 < minimum && minimum < maximum && maximum <= 600.0,
        "{what}: retry_policy must back off exponentially from minimum_backoff to maximum_backoff \
         (0 < {minimum}s < {maximum}s <= 600s)"
    );

    let dead_letter = only_block(body, "dead_letter_policy", &what);
    let (dlq, dlq_body) = infra.referenced(
        required(dead_letter, "dead_letter_topic", &what),
        "google_pubsub_topic",
        "id",
    );
    assert_eq!(
        literal_string(required(dlq_body, "name", &dlq), "name"),
        code.dead_letter_topic,
        "{what}: dead letters must go to {:?} (PUBSUB_DLQ_TOPIC default)",
        code.dead_letter_topic
    );
    let attempts = number(
        required(dead_letter, "max_delivery_attempts", &what),
        "max_delivery_attempts",
    );
    assert_eq!(attempts, 5, "{what}: max_delivery_attempts must be 5 (issue #10)");
    // The worker must accept the same limit as PUBSUB_MAX_DELIVERY_ATTEMPTS.
    let accepted = MessagingConfig::from_vars([
        ("JOB_SECRET", "x".to_owned()),
        ("PUBSUB_MAX_DELIVERY_ATTEMPTS", attempts.to_string()),
    ])
    .unwrap_or_else(|error| panic!("{what}: the worker refuses max_delivery_attempts {attempts}: {error}"));
    assert_eq!(accepted.pubsub.max_delivery_attempts, Some(attempts as u32));

    assert_never_expires(body, &what);
}

fn assert_never_expires(body: &Body, what: &str) {
    let expiration = only_block(body, "expiration_policy", what);
    assert_eq!(
        literal_string(required(expiration, "ttl", what), "ttl"),
        "",
        "{what}: expiration_policy.ttl must be \"\" (never expire; the default deletes idle subscriptions after 31 days)"
    );
}

#[test]
fn dead_letter_subscription_keeps_dead_letters_for_seven_days() {
    let infra = Infra::load();
    let code = code_pubsub();
    let subscriptions = infra.resources("google_pubsub_subscription");
    let (name, body) = subscriptions
        .iter()
        .find(|(_, body)| {
            attribute(body, "name").and_then(literal).as_deref() == Some(code.dead_letter_subscription.as_str())
        })
        .unwrap_or_else(|| {
            panic!(
                "no subscription named {:?} (PUBSUB_DLQ_SUBSCRIPTION default, read by `dlq list|replay`)",
                code.dead_letter_subscription
            )
        });
    let what = format!("google_pubsub_subscription.{name}");
    let (topic, topic_body) = infra.referenced(required(body, "topic", &what), "google_pubsub_topic", "id");
    assert_eq!(
        literal_string(required(topic_body, "name", &topic), "name"),
        code.dead_letter_topic,
        "{what} must read the dead-letter topic"
    );
    let retention = duration_seconds(
        &literal_string(
            required(body, "message_retention_duration", &what),
            "message_retention_duration",
        ),
        "message_retention_duration",
    );
    assert_eq!(retention, 7.0 * 86400.0, "{what}: dead letters must be retained 7 days");
    assert_never_expires(body, &what);
}

#[test]
fn pubsub_service_agent_may_publish_dead_letters_and_acknowledge_them() {
    let infra = Infra::load();
    let code = code_pubsub();
    let agent = infra.local("pubsub_service_agent");
    let agent_text = format!("{agent:?}");
    assert!(
        agent_text.contains("@gcp-sa-pubsub.iam.gserviceaccount.com") && agent_text.contains("serviceAccount:service-"),
        "local.pubsub_service_agent must be serviceAccount:service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com, \
         found {agent_text}"
    );

    let publishes = infra
        .resources("google_pubsub_topic_iam_member")
        .into_iter()
        .any(|(_, body)| {
            is_reference(required(body, "member", "topic iam"), "local.pubsub_service_agent")
                && attribute(body, "role").and_then(literal).as_deref() == Some("roles/pubsub.publisher")
                && topic_name(&infra, required(body, "topic", "topic iam")) == code.dead_letter_topic
        });
    assert!(
        publishes,
        "the Pub/Sub service agent needs roles/pubsub.publisher on {:?} or dead-lettering fails",
        code.dead_letter_topic
    );

    let subscribes = infra
        .resources("google_pubsub_subscription_iam_member")
        .into_iter()
        .any(|(_, body)| {
            is_reference(
                required(body, "member", "subscription iam"),
                "local.pubsub_service_agent",
            ) && attribute(body, "role").and_then(literal).as_deref() == Some("roles/pubsub.subscriber")
                && subscription_name(&infra, required(body, "subscription", "subscription iam")) == code.subscription
        });
    assert!(
        subscribes,
        "the Pub/Sub service agent needs roles/pubsub.subscriber on {:?} or dead-lettering fails",
        code.subscription
    );
}

fn topic_name(infra: &Infra, expression: &Expression) -> String {
    let (name, body) = infra.referenced(expression, "google_pubsub_topic", "id");
    literal_string(required(body, "name", &name), "name")
}

fn subscription_name(infra: &Infra, expression: &Expression) -> String {
    let (name, body) = infra.referenced(expression, "google_pubsub_subscription", "id");
    literal_string(required(body, "name", &name), "name")
}

// ---------------------------------------------------------------- buckets

fn bucket_by_variable<'a>(infra: &'a Infra, variable: &str) -> (String, &'a Body) {
    infra
        .resources("google_storage_bucket")
        .into_iter()
        .find(|(_, body)| attribute(body, "name").is_some_and(|name| is_reference(name, &format!("var.{variable}"))))
        .unwrap_or_else(|| panic!("no google_storage_bucket named by var.{variable}"))
}

#[test]
fn both_buckets_enforce_public_access_prevention_and_uniform_access_and_documents_keep_versions() {
    let infra = Infra::load();
    for (variable, expected) in [
        ("backups_bucket", "keshless-backups"),
        ("documents_bucket", "keshless-documents"),
    ] {
        assert_eq!(
            infra.variable_default(variable).as_deref(),
            Some(expected),
            "var.{variable} must default to the seed's bucket {expected:?}"
        );
        let (name, body) = bucket_by_variable(&infra, variable);
        let what = format!("google_storage_bucket.{name}");
        assert_eq!(
            literal_string(
                required(body, "public_access_prevention", &what),
                "public_access_prevention"
            ),
            "enforced",
            "{what}: public access prevention must be enforced"
        );
        assert_eq!(
            literal_string(
                required(body, "uniform_bucket_level_access", &what),
                "uniform_bucket_level_access"
            ),
            "true",
            "{what}: uniform bucket-level access must be on"
        );
        // The backups bucket has a retention policy instead, which Cloud
        // Storage does not allow beside versioning (see the next test).
        if variable == "documents_bucket" {
            let versioning = only_block(body, "versioning", &what);
            assert_eq!(
                literal_string(required(versioning, "enabled", &what), "enabled"),
                "true",
                "{what}: versioning must be enabled"
            );
        }
        // The vault's location is its own (issue 23, next test).
        let location = if variable == "backups_bucket" {
            "var.vault_location"
        } else {
            "var.region"
        };
        assert!(
            is_reference(required(body, "location", &what), location),
            "{what}: location must be {location}"
        );
    }
    assert_eq!(infra.variable_default("region").as_deref(), Some("europe-west1"));

    let (name, documents) = bucket_by_variable(&infra, "documents_bucket");
    let soft_delete = only_block(documents, "soft_delete_policy", &name);
    assert!(
        attribute(soft_delete, "retention_duration_seconds").is_some(),
        "google_storage_bucket.{name}: soft delete needs a retention"
    );
    // Restoring documents as of a time needs every noncurrent generation.
    for rule in blocks(documents, "lifecycle_rule") {
        let action = only_block(rule.body(), "action", "lifecycle_rule");
        assert_ne!(
            attribute(action, "type").and_then(literal).as_deref(),
            Some("Delete"),
            "google_storage_bucket.{name}: a Delete rule would remove generations `restore documents --as-of` needs"
        );
    }
}

/// A number an expression evaluates to under the variables' defaults (and `overrides`).
fn evaluated_number(infra: &Infra, expression: &Expression, overrides: &[(&str, hcl::Value)], what: &str) -> i64 {
    match expression.evaluate(&Values::load(infra, overrides).context(None)) {
        Ok(hcl::Value::Number(number)) => number
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: {number} is not whole")),
        Ok(other) => panic!("{what} is not a number: {other:?}"),
        Err(error) => panic!("{what} does not evaluate: {error}"),
    }
}

/// Issue 20: a compromised worker account cannot destroy the backups. The
/// bucket refuses to delete or replace anything younger than its retention
/// policy (7 days by default, a variable; locking it is a choice), soft
/// delete keeps what was deleted recoverable, and there is no versioning
/// beside the policy (Cloud Storage refuses the two together).
#[test]
fn the_backups_bucket_keeps_every_object_for_its_retention_period_and_soft_deletes() {
    let infra = Infra::load();
    let (name, backups) = bucket_by_variable(&infra, "backups_bucket");
    let what = format!("google_storage_bucket.{name}");
    let policy = only_block(backups, "retention_policy", &what);
    let period = required(policy, "retention_period", &what);
    assert_eq!(
        evaluated_number(&infra, period, &[], "retention_period"),
        7 * 86_400,
        "{what}: 7 days by default"
    );
    assert_eq!(
        evaluated_number(
            &infra,
            period,
            &[("backups_retention_days", 3.into())],
            "retention_period"
        ),
        3 * 86_400,
        "{what}: the period is var.backups_retention_days"
    );
    assert!(
        is_reference(required(policy, "is_locked", &what), "var.backups_retention_locked"),
        "{what}: locking is a variable"
    );
    assert_eq!(
        infra.variable_default("backups_retention_locked").as_deref(),
        Some("false"),
        "locking is irreversible: opt in"
    );
    // secrets-backup replaces secrets/latest.json.encrypted once a week: a
    // longer period would refuse every replacement.
    let weekly = SCHEDULE
        .iter()
        .find(|row| row.job == "secrets-backup")
        .expect("secrets-backup is scheduled");
    assert_eq!(
        weekly.period,
        keshless_ops::schedule::Period::Weekly,
        "secrets-backup runs weekly"
    );
    let variable = infra
        .all_unlabelled_kind("variable", "backups_retention_days")
        .expect("var.backups_retention_days");
    let validation = only_block(variable, "validation", "backups_retention_days");
    let condition = hcl::format::to_string(required(validation, "condition", "validation")).unwrap();
    assert!(
        condition.contains("<= 7"),
        "var.backups_retention_days must allow at most 7 days: {condition}"
    );

    let soft_delete = only_block(backups, "soft_delete_policy", &what);
    let seconds = evaluated_number(
        &infra,
        required(soft_delete, "retention_duration_seconds", &what),
        &[],
        "soft delete",
    );
    assert!(
        (7 * 86_400..=90 * 86_400).contains(&seconds),
        "{what}: soft delete of {seconds} s"
    );
    for versioning in blocks(backups, "versioning") {
        assert_eq!(
            attribute(versioning.body(), "enabled").and_then(literal).as_deref(),
            Some("false"),
            "{what}: Cloud Storage refuses versioning beside a retention policy"
        );
    }
}

/// Issue 23: the vault (the backups bucket) is outside the blast radius of
/// the platform's project: in a project of its own (a variable, falling
/// back to the main project only when left empty, for development), at a
/// configurable location that can be a dual- or multi-region, and the
/// worker's only right there is its one binding on the bucket.
#[test]
fn the_vault_is_a_separate_project_at_a_configurable_location_with_minimum_worker_grants() {
    let infra = Infra::load();
    let (name, backups) = bucket_by_variable(&infra, "backups_bucket");
    let what = format!("google_storage_bucket.{name}");
    assert!(
        is_reference(required(backups, "project", &what), "local.vault_project"),
        "{what}: project must be local.vault_project"
    );
    let variable = infra
        .all_unlabelled_kind("variable", "vault_project")
        .expect("infra/ declares var.vault_project");
    assert_eq!(
        attribute(variable, "type")
            .map(|kind| hcl::format::to_string(kind).unwrap())
            .as_deref(),
        Some("string")
    );
    let project_of_vault = |overrides: &[(&str, hcl::Value)]| {
        Values::load(&infra, overrides)
            .local("vault_project")
            .as_str()
            .expect("local.vault_project is a string")
            .to_owned()
    };
    assert_eq!(
        project_of_vault(&[
            ("project", "keshless-prod".into()),
            ("vault_project", "keshless-vault".into())
        ]),
        "keshless-vault",
        "the vault is in var.vault_project"
    );
    assert_eq!(
        project_of_vault(&[("project", "keshless-dev".into())]),
        "keshless-dev",
        "left empty (development), the vault falls back to var.project"
    );
    let storage = std::fs::read_to_string(repository().join("infra/variables.tf")).unwrap();
    assert!(
        storage.contains("DEVELOPMENT DEFAULT"),
        "the development fallback of vault_project carries a loud comment"
    );

    // A configurable location, by default a dual-region.
    assert!(
        is_reference(required(backups, "location", &what), "var.vault_location"),
        "{what}: location must be var.vault_location"
    );
    assert_eq!(infra.variable_default("vault_location").as_deref(), Some("EUR4"));
    let location = infra
        .all_unlabelled_kind("variable", "vault_location")
        .expect("var.vault_location");
    let condition = hcl::format::to_string(required(
        only_block(location, "validation", "vault_location"),
        "condition",
        "validation",
    ))
    .unwrap();
    let pattern = condition
        .split('"')
        .nth(1)
        .expect("the validation is a regex")
        .replace("\\\\", "\\");
    let pattern = regex::Regex::new(&pattern).unwrap_or_else(|error| panic!("{pattern}: {error}"));
    for accepted in ["EUR4", "NAM4", "EU", "US", "ASIA1", "europe-west4", "us-central1"] {
        assert!(pattern.is_match(accepted), "vault_location must accept {accepted}");
    }
    for refused in ["", "eur 4", "gs://bucket", "europe-west4-a"] {
        assert!(!pattern.is_match(refused), "vault_location must refuse {refused:?}");
    }

    // The worker's rights in the vault project: the custom role is defined
    // there, and bound once, on the bucket; nothing else there names anyone.
    let role = infra.resource("google_project_iam_custom_role", "backup_writer");
    assert!(
        is_reference(required(role, "project", "backup_writer"), "local.vault_project"),
        "the custom role must be defined in the vault project to be granted on its bucket"
    );
    let in_vault: Vec<String> = infra
        .blocks
        .iter()
        .filter(|(_, block)| block.identifier() == "resource")
        .filter(|(_, block)| {
            attribute(block.body(), "project").is_some_and(|project| is_reference(project, "local.vault_project"))
        })
        .map(|(_, block)| format!("{}.{}", label(block, 0).unwrap(), label(block, 1).unwrap()))
        .collect();
    assert_eq!(
        in_vault,
        [
            "google_project_iam_custom_role.backup_writer",
            "google_storage_bucket.backups",
            "google_project_service.vault_storage",
        ],
        "the only resources in the vault project"
    );
    let in_the_vault = |binding: &Body| {
        attribute(binding, "bucket")
            .and_then(reference)
            .is_some_and(|bucket| bucket.get(1) == Some(&name))
            || attribute(binding, "project").is_some_and(|project| is_reference(project, "local.vault_project"))
    };
    let mut bindings = Vec::new();
    for kind in [
        "google_project_iam_member",
        "google_project_iam_binding",
        "google_project_iam_policy",
        "google_storage_bucket_iam_member",
        "google_storage_bucket_iam_binding",
        "google_storage_bucket_iam_policy",
    ] {
        for (binding_name, binding) in infra.resources(kind) {
            if in_the_vault(binding) {
                bindings.push(format!("{kind}.{binding_name}"));
            }
        }
    }
    assert_eq!(
        bindings,
        ["google_storage_bucket_iam_member.worker_backups_writer"],
        "the one grant in the vault: the worker's, on the bucket (its permissions: the next test)"
    );
}

/// The full drill (`dr-drill` mode=full) recovers into a scratch project and
/// bucket: nothing of it exists until `drill_scratch_project` is set; set, the
/// worker is pointed at them and gets exactly the rights the drill uses there,
/// and `terraform plan` refuses production or the vault as the scratch project.
#[test]
fn the_full_drill_gets_its_scratch_project_and_bucket_only_when_configured_and_never_production() {
    let infra = Infra::load();
    assert_eq!(infra.variable_default("drill_scratch_project").as_deref(), Some(""));
    let configured: [(&str, hcl::Value); 3] = [
        ("project", "keshless-prod".into()),
        ("vault_project", "keshless-vault".into()),
        ("drill_scratch_project", "keshless-drill-scratch".into()),
    ];
    let unconfigured = Values::load(&infra, &[("project", "keshless-prod".into())]);
    let values = Values::load(&infra, &configured);

    // Everything in the scratch project or on the scratch bucket exists only
    // when it is configured.
    let in_scratch: Vec<(String, String, &Body)> = infra
        .blocks
        .iter()
        .filter(|(_, block)| block.identifier() == "resource")
        .filter(|(_, block)| {
            attribute(block.body(), "project").is_some_and(|project| is_reference(project, "var.drill_scratch_project"))
                || attribute(block.body(), "bucket")
                    .is_some_and(|bucket| is_reference(bucket, "var.drill_scratch_bucket"))
        })
        .map(|(_, block)| {
            (
                label(block, 0).unwrap().to_owned(),
                label(block, 1).unwrap().to_owned(),
                block.body(),
            )
        })
        .collect();
    let names: BTreeSet<String> = in_scratch
        .iter()
        .map(|(kind, name, _)| format!("{kind}.{name}"))
        .collect();
    assert_eq!(
        names,
        [
            "google_project_iam_custom_role.drill_scratch_secrets",
            "google_project_iam_member.worker_drill_scratch_secrets",
            "google_project_service.drill_scratch",
            "google_storage_bucket.drill_scratch",
            "google_storage_bucket_iam_member.worker_drill_scratch_objects",
        ]
        .map(str::to_owned)
        .into(),
        "the resources of the full drill's scratch project"
    );
    let instances = |values: &Values, body: &Body, what: &str| -> usize {
        let context = values.context(None);
        if let Some(count) = attribute(body, "count") {
            return match count.evaluate(&context) {
                Ok(hcl::Value::Number(number)) => number.as_u64().unwrap() as usize,
                other => panic!("{what}: count does not evaluate: {other:?}"),
            };
        }
        match required(body, "for_each", what).evaluate(&context) {
            Ok(hcl::Value::Array(items)) => items.len(),
            other => panic!("{what}: for_each does not evaluate: {other:?}"),
        }
    };
    for (kind, name, body) in &in_scratch {
        let what = format!("{kind}.{name}");
        assert_eq!(
            instances(&unconfigured, body, &what),
            0,
            "{what} exists without a scratch project"
        );
        assert!(
            instances(&values, body, &what) >= 1,
            "{what} is missing with a scratch project"
        );
    }

    // The worker is pointed at them, and reads them as the scratch targets.
    assert_eq!(
        worker_variable(&infra, &unconfigured, "DRILL_SECRET_MANAGER_PROJECT"),
        ""
    );
    assert_eq!(worker_variable(&infra, &unconfigured, "DRILL_DOCUMENTS_STORE"), "");
    let project = worker_variable(&infra, &values, "DRILL_SECRET_MANAGER_PROJECT");
    let store = worker_variable(&infra, &values, "DRILL_DOCUMENTS_STORE");
    assert_eq!(project, "keshless-drill-scratch");
    assert_eq!(store, "gs://keshless-drill-scratch");
    let base = [
        ("JOB_SECRET", "stand-in-job-secret"),
        ("SECRETS_ENCRYPTION_KEY", "stand-in-key-of-at-least-32-characters"),
        ("DATABASE_URL", "postgres://worker@db/keshless"),
        ("GCS_BACKUPS_BUCKET", "keshless-backups"),
        ("GCS_DOCUMENTS_BUCKET", "keshless-documents"),
        ("GOOGLE_CLOUD_PROJECT", "keshless-prod"),
        ("SECRETS_SOURCE", "secret-manager"),
    ];
    let config = Config::from_vars(
        base.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .chain([
                ("DRILL_SECRET_MANAGER_PROJECT".to_owned(), project.clone()),
                ("DRILL_DOCUMENTS_STORE".to_owned(), store.clone()),
            ]),
    )
    .expect("the worker accepts the scratch targets");
    assert_eq!(config.full_drill.project.as_deref(), Some("keshless-drill-scratch"));
    assert_eq!(
        config.full_drill.documents.as_ref().map(ToString::to_string).as_deref(),
        Some("gs://keshless-drill-scratch")
    );
    let config = Config::from_vars(
        base.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .chain([
                ("DRILL_SECRET_MANAGER_PROJECT".to_owned(), String::new()),
                ("DRILL_DOCUMENTS_STORE".to_owned(), String::new()),
            ]),
    )
    .expect("empty scratch targets: the worker starts, the full drill refuses");
    assert_eq!(config.full_drill.project, None);
    assert_eq!(config.full_drill.documents, None);

    // Exactly the Secret Manager rights the full drill uses, in the scratch project.
    let binding = infra.resource("google_project_iam_member", "worker_drill_scratch_secrets");
    assert!(is_reference(
        required(binding, "member", "binding"),
        "local.worker_member"
    ));
    let Granted::Custom { permissions, .. } = Granted::of(&infra, binding, "worker_drill_scratch_secrets") else {
        panic!("the scratch grant is the full drill's custom role");
    };
    let expected: BTreeSet<String> = [
        "secretmanager.secrets.create",
        "secretmanager.secrets.delete",
        "secretmanager.secrets.get",
        "secretmanager.secrets.list",
        "secretmanager.secrets.update",
        "secretmanager.versions.access",
        "secretmanager.versions.add",
        "secretmanager.versions.destroy",
        "secretmanager.versions.disable",
        "secretmanager.versions.get",
        "secretmanager.versions.list",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(permissions, expected);
    let role = infra.resource("google_project_iam_custom_role", "drill_scratch_secrets");
    assert!(is_reference(
        required(role, "project", "role"),
        "var.drill_scratch_project"
    ));

    // `terraform plan` refuses production and the vault as the scratch project.
    let precondition = nested(role, &["lifecycle", "precondition"], "drill_scratch_secrets");
    let condition = required(precondition, "condition", "precondition");
    let holds = |scratch: &str| {
        let values = Values::load(
            &infra,
            &[
                ("project", "keshless-prod".into()),
                ("vault_project", "keshless-vault".into()),
                ("drill_scratch_project", scratch.into()),
            ],
        );
        match condition.evaluate(&values.context(None)) {
            Ok(hcl::Value::Bool(holds)) => holds,
            other => panic!("the precondition does not evaluate: {other:?}"),
        }
    };
    assert!(holds("keshless-drill-scratch"));
    assert!(!holds("keshless-prod"), "production as the scratch project");
    assert!(!holds("keshless-vault"), "the vault as the scratch project");

    // The scratch bucket: private, unversioned, and nothing in it outlives 3 days.
    let bucket = infra.resource("google_storage_bucket", "drill_scratch");
    assert_eq!(
        literal_string(required(bucket, "public_access_prevention", "bucket"), "prevention"),
        "enforced"
    );
    let versioning = only_block(bucket, "versioning", "drill_scratch");
    assert_eq!(
        literal(required(versioning, "enabled", "versioning")).as_deref(),
        Some("false")
    );
    let rule = only_block(bucket, "lifecycle_rule", "drill_scratch");
    let age = number(required(only_block(rule, "condition", "rule"), "age", "age"), "age");
    assert!(age <= 7, "the scratch bucket keeps leftovers {age} days");
    let bucket_grants: Vec<String> = infra
        .resources("google_storage_bucket_iam_member")
        .into_iter()
        .filter(|(_, binding)| is_reference(required(binding, "bucket", "binding"), "var.drill_scratch_bucket"))
        .map(|(name, binding)| {
            assert!(is_reference(required(binding, "member", &name), "local.worker_member"));
            literal_string(required(binding, "role", &name), "role")
        })
        .collect();
    assert_eq!(bucket_grants, ["roles/storage.objectAdmin"]);
}

/// The worker deletes what retention expires, and can do nothing that
/// would let it destroy more: release a pin's hold, change the retention
/// policy or soft delete, or change who may do what. It reads the policy
/// (cleanup never tries a deletion the bucket would refuse).
#[test]
fn the_worker_may_delete_backups_but_not_release_holds_or_loosen_the_bucket() {
    let infra = Infra::load();
    let (backups, _) = bucket_by_variable(&infra, "backups_bucket");
    let bindings: Vec<(String, &Body)> = infra
        .resources("google_storage_bucket_iam_member")
        .into_iter()
        .filter(|(name, binding)| {
            reference(required(binding, "bucket", name)).is_some_and(|bucket| bucket.get(1) == Some(&backups))
        })
        .collect();
    assert_eq!(bindings.len(), 1, "one binding on google_storage_bucket.{backups}");
    let (name, binding) = &bindings[0];
    assert!(is_reference(required(binding, "member", name), "local.worker_member"));
    let (role, role_body) = infra.referenced(required(binding, "role", name), "google_project_iam_custom_role", "id");
    let Expression::Array(items) = required(role_body, "permissions", &role) else {
        panic!("google_project_iam_custom_role.{role}: permissions must be a list");
    };
    let permissions: BTreeSet<String> = items.iter().map(|item| literal_string(item, "permission")).collect();
    let expected: BTreeSet<String> = [
        "storage.buckets.get",
        "storage.objects.create",
        "storage.objects.delete",
        "storage.objects.get",
        "storage.objects.list",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(permissions, expected, "google_project_iam_custom_role.{role}");
    // No other grant gives the worker storage rights.
    for (name, binding) in infra.resources("google_project_iam_member") {
        if is_reference(required(binding, "member", &name), "local.worker_member") {
            match Granted::of(&infra, binding, &name) {
                Granted::Predefined(granted) => assert!(
                    !granted.starts_with("roles/storage."),
                    "google_project_iam_member.{name} grants {granted}"
                ),
                Granted::Custom {
                    name: role,
                    permissions,
                } => assert!(
                    !permissions.iter().any(|permission| permission.starts_with("storage.")),
                    "google_project_iam_member.{name} grants storage rights through {role}: {permissions:?}"
                ),
            }
        }
    }
}

/// `documents url` on Cloud Run signs through IAM signBlob as the worker's
/// own service account: the API is on, and the worker may sign as itself,
/// granted on its own service account and nowhere else.
#[test]
fn the_worker_may_sign_urls_as_itself_and_only_as_itself() {
    let infra = Infra::load();
    let apis = infra.resource("google_project_service", "apis");
    let services = hcl::format::to_string(required(apis, "for_each", "apis")).unwrap();
    assert!(services.contains("\"iamcredentials.googleapis.com\""), "{services}");
    let grants: Vec<(String, &Body)> = infra
        .resources("google_service_account_iam_member")
        .into_iter()
        .filter(|(name, binding)| {
            literal(required(binding, "role", name)).as_deref() == Some("roles/iam.serviceAccountTokenCreator")
        })
        .collect();
    assert_eq!(grants.len(), 1, "one token-creator grant");
    let (name, grant) = &grants[0];
    assert!(
        is_reference(
            required(grant, "service_account_id", name),
            "google_service_account.worker.name"
        ),
        "google_service_account_iam_member.{name}: on the worker's own service account"
    );
    assert!(is_reference(required(grant, "member", name), "local.worker_member"));
    for (name, binding) in infra.resources("google_project_iam_member") {
        match Granted::of(&infra, binding, &name) {
            Granted::Predefined(granted) => assert_ne!(
                granted, "roles/iam.serviceAccountTokenCreator",
                "google_project_iam_member.{name}: project-wide token creator"
            ),
            Granted::Custom {
                name: role,
                permissions,
            } => assert!(
                !permissions.iter().any(|permission| permission.starts_with("iam.")),
                "google_project_iam_member.{name}: IAM rights through {role}: {permissions:?}"
            ),
        }
    }
}

/// One class of backups, the prefix it lives under and its default retention.
struct RetentionClass {
    prefix: &'static str,
    days: u32,
}

fn retention_classes(retention: RetentionConfig) -> Vec<RetentionClass> {
    // Months and weeks in their longest form, so a backstop is never shorter.
    vec![
        RetentionClass {
            prefix: "postgresql/daily/",
            days: retention.daily_days,
        },
        RetentionClass {
            prefix: "postgresql/monthly/",
            days: retention.monthly_months * 31,
        },
        RetentionClass {
            prefix: "secrets/weekly/",
            days: retention.weekly_secrets_weeks * 7,
        },
        RetentionClass {
            prefix: "documents/inventory/",
            days: retention.inventory_days,
        },
        RetentionClass {
            prefix: "drills/",
            days: retention.drill_report_months * 31,
        },
    ]
}

/// Never deleted by anyone (SPEC section 6).
const NEVER_DELETED: &str = "secrets/latest.json.encrypted";

/// A lifecycle rule reduced to what decides whether it can delete too early.
#[derive(Debug, Default)]
struct LifecycleRule {
    action: String,
    age_days: Option<i64>,
    with_state: Option<String>,
    prefixes: Vec<String>,
    /// Conditions this check does not understand: a person must review them.
    other_conditions: Vec<String>,
}

/// Why a backups-bucket lifecycle rule could delete something before the
/// app's retention would, or delete what must never go; empty when it cannot.
fn early_deletions(rule: &LifecycleRule, classes: &[RetentionClass]) -> Vec<String> {
    if rule.action != "Delete" {
        return Vec::new();
    }
    // Noncurrent versions only: what the app already deleted or replaced.
    if rule.with_state.as_deref() == Some("ARCHIVED") {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if !rule.other_conditions.is_empty() {
        problems.push(format!(
            "conditions {:?} may select live backups regardless of age",
            rule.other_conditions
        ));
    }
    let Some(age) = rule.age_days else {
        problems.push("deletes live objects without an age condition".to_owned());
        return problems;
    };
    if rule.prefixes.is_empty() {
        problems.push(format!(
            "has no matches_prefix, so it would delete {NEVER_DELETED} after {age} days"
        ));
        return problems;
    }
    for prefix in &rule.prefixes {
        if NEVER_DELETED.starts_with(prefix.as_str()) {
            problems.push(format!(
                "prefix {prefix:?} covers {NEVER_DELETED}, which is never deleted"
            ));
        }
        let covered: Vec<&RetentionClass> = classes
            .iter()
            .filter(|class| class.prefix.starts_with(prefix.as_str()) || prefix.starts_with(class.prefix))
            .collect();
        if covered.is_empty() {
            problems.push(format!("prefix {prefix:?} is not a backup class this check knows"));
        }
        for class in covered {
            if age <= i64::from(class.days) {
                problems.push(format!(
                    "deletes {} after {age} days, not later than the app's retention of {} days",
                    class.prefix, class.days
                ));
            }
        }
    }
    problems
}

fn lifecycle_rule(block: &Block) -> LifecycleRule {
    let action = only_block(block.body(), "action", "lifecycle_rule");
    let condition = only_block(block.body(), "condition", "lifecycle_rule");
    let mut rule = LifecycleRule {
        action: literal_string(required(action, "type", "lifecycle_rule.action"), "type"),
        ..LifecycleRule::default()
    };
    for attribute in condition.attributes() {
        match attribute.key() {
            "age" => rule.age_days = Some(number(attribute.expr(), "age")),
            "with_state" => rule.with_state = Some(literal_string(attribute.expr(), "with_state")),
            "matches_prefix" => {
                let Expression::Array(items) = attribute.expr() else {
                    panic!("matches_prefix must be a list of literals");
                };
                rule.prefixes = items.iter().map(|item| literal_string(item, "prefix")).collect();
            }
            "days_since_noncurrent_time" | "num_newer_versions" => {} // only meaningful with ARCHIVED
            other => rule.other_conditions.push(other.to_owned()),
        }
    }
    rule
}

#[test]
fn backups_lifecycle_never_deletes_before_the_app_retention() {
    let infra = Infra::load();
    let (name, backups) = bucket_by_variable(&infra, "backups_bucket");
    let classes = retention_classes(RetentionConfig::default());
    let rules: Vec<LifecycleRule> = blocks(backups, "lifecycle_rule").map(lifecycle_rule).collect();
    assert!(
        !rules.is_empty(),
        "google_storage_bucket.{name}: issue #10 asks for a lifecycle backstop"
    );
    for rule in &rules {
        let problems = early_deletions(rule, &classes);
        assert!(
            problems.is_empty(),
            "google_storage_bucket.{name}: lifecycle rule {rule:?}:\n  - {}",
            problems.join("\n  - ")
        );
    }
}

#[test]
fn the_lifecycle_check_rejects_rules_that_delete_too_early() {
    let classes = retention_classes(RetentionConfig::default());
    let rule = |age: Option<i64>, state: Option<&str>, prefixes: &[&str]| LifecycleRule {
        action: "Delete".to_owned(),
        age_days: age,
        with_state: state.map(str::to_owned),
        prefixes: prefixes.iter().map(|prefix| (*prefix).to_owned()).collect(),
        other_conditions: Vec::new(),
    };
    let cases: &[(&str, LifecycleRule, bool)] = &[
        // (why, rule, acceptable)
        ("noncurrent versions only", rule(None, Some("ARCHIVED"), &[]), true),
        (
            "three years on every class",
            rule(Some(1095), Some("LIVE"), &["postgresql/", "secrets/weekly/", "drills/"]),
            true,
        ),
        (
            "dailies after 31 days",
            rule(Some(31), None, &["postgresql/daily/"]),
            true,
        ),
        (
            "dailies at their retention",
            rule(Some(30), None, &["postgresql/daily/"]),
            false,
        ),
        (
            "postgresql/ after a year cuts monthly backups",
            rule(Some(365), None, &["postgresql/"]),
            false,
        ),
        (
            "drill reports after two years",
            rule(Some(730), None, &["drills/"]),
            false,
        ),
        (
            "no prefix hits latest.json.encrypted",
            rule(Some(5000), None, &[]),
            false,
        ),
        ("secrets/ covers latest", rule(Some(5000), None, &["secrets/"]), false),
        (
            "no age deletes everything",
            rule(None, Some("LIVE"), &["drills/"]),
            false,
        ),
        ("unknown prefix", rule(Some(5000), None, &["elsewhere/"]), false),
    ];
    for (why, rule, acceptable) in cases {
        let problems = early_deletions(rule, &classes);
        assert_eq!(problems.is_empty(), *acceptable, "{why}: {problems:?}");
    }
    let mut created_before = rule(Some(5000), None, &["drills/"]);
    created_before.other_conditions.push("created_before".to_owned());
    assert!(!early_deletions(&created_before, &classes).is_empty());
}

// ---------------------------------------------------------------- worker

/// The worker pool's container environment: name → value under the
/// variables' defaults, secrets → `secret:<SECRET_ID>`.
fn worker_environment(infra: &Infra) -> (String, BTreeMap<String, String>) {
    let pools = infra.resources("google_cloud_run_v2_worker_pool");
    assert_eq!(pools.len(), 1, "infra/ must define one google_cloud_run_v2_worker_pool");
    let (name, pool) = pools.into_iter().next().expect("one pool");
    let what = format!("google_cloud_run_v2_worker_pool.{name}");
    let template = only_block(pool, "template", &what);
    let container = only_block(template, "containers", &what);
    let mut environment = BTreeMap::new();
    for env in blocks(container, "env") {
        let body = env.body();
        let variable = literal_string(required(body, "name", "env"), "env name");
        let value = match attribute(body, "value") {
            Some(value) => infra.resolve(value),
            None => {
                let source = only_block(body, "value_source", &variable);
                let reference = only_block(source, "secret_key_ref", &variable);
                let (secret, secret_body) = infra.referenced(
                    required(reference, "secret", &variable),
                    "google_secret_manager_secret",
                    "secret_id",
                );
                format!(
                    "secret:{}",
                    literal_string(required(secret_body, "secret_id", &secret), "secret_id")
                )
            }
        };
        assert!(
            environment.insert(variable.clone(), value).is_none(),
            "{what}: env {variable} is set twice"
        );
    }
    (what, environment)
}

/// Names of environment variables the code reads: the string literals of
/// `src/config.rs` that look like one, and `RUST_LOG` (telemetry).
fn variables_the_code_reads() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repository().join("src/config.rs")).expect("read src/config.rs");
    // Every `"NAME"` whose NAME looks like an environment variable.
    let mut names = BTreeSet::new();
    for (start, _) in source.match_indices('"') {
        let rest = &source[start + 1..];
        let length = rest
            .find(|character: char| !(character.is_ascii_uppercase() || character.is_ascii_digit() || character == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..length];
        if rest[length..].starts_with('"')
            && name.len() >= 4
            // `DATABASES` has no underscore; short all-capital words
            // (`UTF8`, `PGDMP`) are not variables.
            && (name.contains('_') || name.len() >= 8)
            && name.starts_with(|character: char| character.is_ascii_uppercase())
        {
            names.insert(name.to_owned());
        }
    }
    names.insert("RUST_LOG".to_owned());
    names
}

const REQUIRED_VARIABLES: [&str; 5] = [
    "JOB_SECRET",
    "SECRETS_ENCRYPTION_KEY",
    "DATABASE_URL",
    "GCS_BACKUPS_BUCKET",
    "GCS_DOCUMENTS_BUCKET",
];

#[test]
fn worker_environment_names_are_known_to_the_config_and_include_the_required_ones() {
    let infra = Infra::load();
    let (what, environment) = worker_environment(&infra);
    let known = variables_the_code_reads();
    for required_variable in REQUIRED_VARIABLES {
        assert!(
            known.contains(required_variable),
            "the scan of src/config.rs misses {required_variable}: fix variables_the_code_reads"
        );
        assert!(
            environment.contains_key(required_variable),
            "{what}: env {required_variable} is missing (SPEC section 5: required in production)"
        );
    }
    for name in environment.keys() {
        assert!(
            known.contains(name),
            "{what}: env {name} is not a variable src/config.rs reads (known: {known:?})"
        );
    }
    for secret in ["JOB_SECRET", "SECRETS_ENCRYPTION_KEY", "DATABASE_URL"] {
        assert_eq!(
            environment[secret],
            format!("secret:{secret}"),
            "{what}: {secret} must come from Secret Manager secret {secret}, not a literal"
        );
    }
}

#[test]
fn worker_environment_is_a_valid_configuration_matching_the_infrastructure() {
    let infra = Infra::load();
    let (what, environment) = worker_environment(&infra);
    // Secret values are not in Terraform; stand in valid ones.
    let stand_in: HashMap<&str, &str> = HashMap::from([
        ("secret:JOB_SECRET", "stand-in-job-secret"),
        (
            "secret:SECRETS_ENCRYPTION_KEY",
            "stand-in-key-of-at-least-32-characters",
        ),
        ("secret:DATABASE_URL", "postgres://worker@db/keshless"),
    ]);
    // Expressions `resolve` cannot read: evaluated under the defaults, with
    // the one recipient an operator must give (the default list is empty).
    let (_, recipient) = keshless_ops::postgres::archive::generate_identity();
    let values = Values::load(
        &infra,
        &[(
            "backup_encryption_recipients",
            hcl::Value::Array(vec![hcl::Value::from(recipient.clone())]),
        )],
    );
    let databases = worker_databases(&infra, &values);
    let recipients = worker_variable(&infra, &values, "BACKUP_ENCRYPTION_RECIPIENTS");
    let variables: Vec<(String, String)> = environment
        .iter()
        .map(|(name, value)| {
            let value = match name.as_str() {
                "DATABASES" => databases.clone(),
                "BACKUP_ENCRYPTION_RECIPIENTS" => recipients.clone(),
                "DRILL_DOCUMENTS_STORE" => worker_variable(&infra, &values, name),
                _ => stand_in
                    .get(value.as_str())
                    .map_or_else(|| value.clone(), |value| (*value).to_owned()),
            };
            (name.clone(), value)
        })
        .collect();
    let config = Config::from_vars(variables.clone())
        .unwrap_or_else(|error| panic!("{what}: the worker would refuse to start: {error}"));
    // Dumps: zstd, encrypted to the given keys, and without them no start.
    assert_eq!(config.dumps.compression.to_string(), "zstd:3");
    assert_eq!(
        config.dumps.encryption,
        keshless_ops::config::EncryptionPolicy::Required
    );
    assert_eq!(config.dumps.recipients.as_ref().unwrap().public_keys(), [recipient]);
    assert!(
        matches!(&config.dumps.identity, Some(keshless_ops::postgres::archive::IdentitySource::Secret { version, .. })
            if version.ends_with("/secrets/BACKUP_AGE_IDENTITY/versions/latest")),
        "{what}: the drill reads its identity from the BACKUP_AGE_IDENTITY secret: {:?}",
        config.dumps.identity
    );
    let without_recipients: Vec<(String, String)> = variables
        .iter()
        .filter(|(name, _)| name != "BACKUP_ENCRYPTION_RECIPIENTS")
        .cloned()
        .collect();
    let refused = Config::from_vars(without_recipients).expect_err("no recipients");
    assert!(refused.to_string().contains("BACKUP_ENCRYPTION=required"), "{refused}");
    let pools = infra.resources("google_cloud_run_v2_worker_pool");
    let pool = pools.values().next().expect("one pool");
    let precondition = nested(pool, &["lifecycle", "precondition"], "worker pool");
    let condition = format!("{:?}", required(precondition, "condition", "precondition"));
    assert!(
        condition.contains("backup_encryption") && condition.contains("backup_encryption_recipients"),
        "{what}: terraform plan must refuse required encryption without recipients: {condition}"
    );

    let code = code_pubsub();
    let expected = PubSubConfig {
        max_delivery_attempts: Some(5),
        ..code.clone()
    };
    assert_eq!(
        config.pubsub, expected,
        "{what}: the Pub/Sub names and limit must be the code's defaults and the subscription's dead-letter limit"
    );
    assert_eq!(config.gcs_backups_bucket.as_deref(), Some("keshless-backups"));
    assert_eq!(config.gcs_documents_bucket.as_deref(), Some("keshless-documents"));
    assert_eq!(
        environment.get("SCHEDULE_TIME_ZONE").map(String::as_str),
        infra.variable_default("schedule_time_zone").as_deref(),
        "{what}: SCHEDULE_TIME_ZONE must be var.schedule_time_zone, as the scheduler jobs' time_zone"
    );
    assert_eq!(config.schedule_time_zone, chrono_tz::UTC);

    // Cloud Run kills the container 10 s after SIGTERM; the grace period and
    // the nack/release that follows it must fit.
    let grace = config.worker.shutdown_grace.as_secs();
    assert!(
        keshless_ops::runtime::worker::SHUTDOWN_AFTER_GRACE <= std::time::Duration::from_secs(SHUTDOWN_MARGIN_SECONDS),
        "what the worker takes after the grace period must fit the {SHUTDOWN_MARGIN_SECONDS} s margin"
    );
    assert!(
        grace + SHUTDOWN_MARGIN_SECONDS <= CLOUD_RUN_SIGTERM_TO_SIGKILL_SECONDS,
        "{what}: SHUTDOWN_GRACE_SECONDS={grace} + {SHUTDOWN_MARGIN_SECONDS} s margin exceeds the \
         {CLOUD_RUN_SIGTERM_TO_SIGKILL_SECONDS} s Cloud Run allows after SIGTERM"
    );

    // What secrets-backup protects must be in the environment it reads.
    if let keshless_ops::config::SecretsSourceConfig::Env { names, .. } = &config.secrets_source {
        for name in names {
            assert!(
                environment.contains_key(name),
                "{what}: SECRETS_ENV_VARS lists {name}, which the worker's environment does not have"
            );
        }
    }
}

#[test]
fn worker_runs_the_worker_command_with_its_probe_and_identity() {
    let infra = Infra::load();
    let pools = infra.resources("google_cloud_run_v2_worker_pool");
    let (name, pool) = pools.into_iter().next().expect("a worker pool");
    let what = format!("google_cloud_run_v2_worker_pool.{name}");
    assert!(is_reference(required(pool, "location", &what), "var.region"));
    let template = only_block(pool, "template", &what);
    assert!(
        is_reference(
            required(template, "service_account", &what),
            "google_service_account.worker.email"
        ),
        "{what}: must run as the least-privilege service account"
    );
    let container = only_block(template, "containers", &what);
    assert!(is_reference(required(container, "image", &what), "var.image"));
    let Expression::Array(arguments) = required(container, "args", &what) else {
        panic!("{what}: args must be a list");
    };
    let arguments: Vec<String> = arguments.iter().map(|item| literal_string(item, "arg")).collect();
    assert_eq!(arguments, ["worker"], "{what}: must run `keshless-ops worker`");
    let command: Vec<&str> = std::iter::once("keshless-ops")
        .chain(arguments.iter().map(String::as_str))
        .collect();
    keshless_ops::cli::Cli::try_parse_from(&command)
        .unwrap_or_else(|error| panic!("{what}: {command:?} is not a valid command: {error}"));

    let probe = only_block(container, "liveness_probe", &what);
    let http = only_block(probe, "http_get", &what);
    assert_eq!(literal_string(required(http, "path", &what), "path"), "/healthz");
    assert_eq!(
        literal_string(required(http, "port", &what), "port"),
        "8080",
        "{what}: the probe must hit the worker's default PORT"
    );
}

#[test]
fn worker_service_account_reads_exactly_the_secrets_its_environment_uses() {
    let infra = Infra::load();
    let (what, environment) = worker_environment(&infra);
    // Secrets as env, and the drill's age identity, read through the API.
    let used: BTreeSet<String> = environment
        .values()
        .filter_map(|value| value.strip_prefix("secret:"))
        .map(str::to_owned)
        .chain(environment.get("BACKUP_AGE_IDENTITY_SECRET").cloned())
        .collect();
    let granted: BTreeSet<String> = infra
        .resources("google_secret_manager_secret_iam_member")
        .into_iter()
        .filter(|(_, body)| is_reference(required(body, "member", "secret iam"), "local.worker_member"))
        .map(|(name, body)| {
            assert_eq!(
                attribute(body, "role").and_then(literal).as_deref(),
                Some("roles/secretmanager.secretAccessor"),
                "google_secret_manager_secret_iam_member.{name}: the worker only needs secretAccessor"
            );
            secret_id_of(&infra, required(body, "secret_id", &name))
        })
        .collect();
    assert_eq!(
        granted, used,
        "{what}: the worker's secret accessor bindings must be exactly the secrets its env reads"
    );
    // Secrets are created empty: no value may live in Terraform (or its state).
    assert!(
        infra.resources("google_secret_manager_secret_version").is_empty(),
        "infra/ must not create secret versions: their values would be stored in the state"
    );
    let worker_member = format!("{:?}", infra.local("worker_member"));
    assert!(
        worker_member.contains("serviceAccount:") && worker_member.contains("google_service_account.worker.email"),
        "local.worker_member must be the worker's service account, found {worker_member}"
    );
}

#[test]
fn worker_reads_the_whole_secret_manager_project_it_backs_up() {
    let infra = Infra::load();
    let (what, environment) = worker_environment(&infra);
    assert_eq!(
        environment.get("SECRETS_SOURCE").map(String::as_str),
        Some("secret-manager"),
        "{what}: secrets-backup must protect Secret Manager itself"
    );
    // The worker's project-wide roles are in its own project, but for the
    // full drill's one custom role in the scratch project (the next test).
    let project_roles: BTreeSet<String> = infra
        .resources("google_project_iam_member")
        .into_iter()
        .filter(|(_, body)| is_reference(required(body, "member", "project iam"), "local.worker_member"))
        .filter(|(name, body)| {
            if is_reference(required(body, "project", name), "var.drill_scratch_project") {
                assert!(
                    matches!(Granted::of(&infra, body, name), Granted::Custom { ref name, .. } if name == "drill_scratch_secrets"),
                    "google_project_iam_member.{name}: in the scratch project the worker holds only the full drill's role"
                );
                return false;
            }
            true
        })
        .map(|(name, body)| {
            assert!(
                is_reference(required(body, "project", &name), "var.project"),
                "google_project_iam_member.{name}: the worker's own project"
            );
            literal_string(required(body, "role", &name), "role")
        })
        .collect();
    // Listing needs viewer (metadata, versions); payloads need secretAccessor.
    // Nothing that writes: restoring is an operator's job (secretmanager.admin).
    for role in ["roles/secretmanager.viewer", "roles/secretmanager.secretAccessor"] {
        assert!(
            project_roles.contains(role),
            "the worker lacks {role} on the project: {project_roles:?}"
        );
    }
    let allowed: BTreeSet<&str> = [
        "roles/secretmanager.viewer",
        "roles/secretmanager.secretAccessor",
        "roles/cloudsql.client",
    ]
    .into();
    for role in &project_roles {
        assert!(
            allowed.contains(role.as_str()),
            "the worker must not hold {role} project-wide"
        );
    }
}

// ---------------------------------------------------------------- runbook

/// The README's "Operations runbook" section.
fn runbook() -> String {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("read README.md");
    let start = readme
        .find("\n## Operations runbook")
        .expect("README.md has an \"## Operations runbook\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |index| index + 3);
    rest[..end].to_owned()
}

/// Commands in the runbook's ```sh blocks, continuation lines joined,
/// comment lines dropped.
fn runbook_commands(runbook: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in runbook.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = !in_block && trimmed == "```sh";
            continue;
        }
        if !in_block || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// The words of a command after leading `NAME=value` assignments.
fn command_words(command: &str) -> Vec<String> {
    let words = shell_words::split(command).unwrap_or_else(|error| panic!("runbook command {command:?}: {error}"));
    words
        .into_iter()
        .skip_while(|word| {
            word.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
        })
        .collect()
}

#[test]
fn every_runbook_command_is_one_the_cli_and_the_infrastructure_accept() {
    let infra = Infra::load();
    let code = code_pubsub();
    let secret_ids: BTreeSet<String> = infra
        .resources("google_secret_manager_secret")
        .values()
        .map(|body| literal_string(required(body, "secret_id", "secret"), "secret_id"))
        .collect();
    let scheduled: BTreeSet<&str> = SCHEDULE.iter().map(|row| row.job).collect();

    let commands = runbook_commands(&runbook());
    let mut subcommands = BTreeSet::new();
    for command in &commands {
        let words = command_words(command);
        let Some(program) = words.first() else { continue };
        // Secret names, wherever gcloud reads or writes one (pipelines and $(...) too).
        for (marker, _) in command
            .match_indices("--secret=")
            .chain(command.match_indices("versions add "))
        {
            let rest = &command[marker..];
            let name: String = rest[rest.find(['=', ' ']).expect("marker") + 1..]
                .trim_start_matches("add ")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            assert!(
                secret_ids.contains(&name),
                "README runbook: `{command}` names secret {name:?}; infra/ creates {secret_ids:?}"
            );
        }
        match program.as_str() {
            "keshless-ops" => {
                if let Err(error) = keshless_ops::cli::Cli::try_parse_from(&words) {
                    panic!("README runbook: `{command}` is not accepted by the CLI:\n{error}");
                }
                subcommands.insert(words.iter().skip(1).take(2).cloned().collect::<Vec<_>>().join(" "));
            }
            "gcloud" => {
                if let Some(index) = words
                    .windows(3)
                    .position(|window| window == ["pubsub", "topics", "publish"])
                {
                    assert_eq!(
                        words.get(index + 3).map(String::as_str),
                        Some(code.topic.as_str()),
                        "README runbook: `{command}` must publish to the jobs topic"
                    );
                }
            }
            "curl" => {
                let job = command
                    .split("/backup-jobs/")
                    .nth(1)
                    .map(|rest| {
                        rest.chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                            .collect::<String>()
                    })
                    .unwrap_or_else(|| panic!("README runbook: `{command}` must POST /backup-jobs/JOB"));
                assert!(
                    scheduled.contains(job.as_str()),
                    "README runbook: `{command}` posts unknown job {job:?}"
                );
            }
            "terraform" => {
                for word in &words {
                    if let Some(address) = word.strip_prefix("-target=") {
                        let (kind, name) = address.split_once('.').expect("-target=KIND.NAME");
                        infra.resource(kind, name);
                    }
                }
            }
            _ => {}
        }
    }

    // The procedures issue #10 lists, each with at least one real command.
    for expected in [
        "publish postgres-backup",
        "dlq list",
        "dlq replay",
        "restore postgres",
        "restore secrets",
        "restore documents",
        "secrets rekey",
        "secrets verify",
        "backups list",
        "backups show",
        "backups verify",
        "backups pin",
        "backups unpin",
        "dlq discard",
        "documents url",
        "status",
        "drill",
        "cleanup",
    ] {
        assert!(
            subcommands
                .iter()
                .any(|found| found == expected || found.starts_with(&format!("{expected} "))),
            "README runbook has no `keshless-ops {expected}` command in a ```sh block (found {subcommands:?})"
        );
    }
    for program in ["gcloud", "curl", "terraform"] {
        assert!(
            commands
                .iter()
                .any(|command| command_words(command).first().map(String::as_str) == Some(program)),
            "README runbook has no {program} command"
        );
    }
}

#[test]
fn runbook_command_extraction_reads_only_shell_blocks() {
    let text = "intro `keshless-ops nonsense`\n```sh\n# comment\nA=1 keshless-ops dlq list \\\n  --json\n```\n```text\nkeshless-ops ignored\n```\n";
    let commands = runbook_commands(text);
    assert_eq!(commands, ["A=1 keshless-ops dlq list  --json"]);
    assert_eq!(command_words(&commands[0]), ["keshless-ops", "dlq", "list", "--json"]);
}

/// The worker reads the documents (inventory, drill, mirror) and never writes
/// them: a backup worker with write access to the KYC documents is one
/// compromised job away from losing them.
#[test]
fn the_worker_may_only_read_the_documents_bucket() {
    let infra = Infra::load();
    let (documents, _) = bucket_by_variable(&infra, "documents_bucket");
    let mut roles = Vec::new();
    for (name, binding) in infra.resources("google_storage_bucket_iam_member") {
        let bucket = reference(required(binding, "bucket", &name)).expect("a bucket reference");
        if bucket.get(1) != Some(&documents) {
            continue;
        }
        roles.push(literal_string(required(binding, "role", &name), "role"));
    }
    assert_eq!(
        roles,
        ["roles/storage.objectViewer"],
        "bindings on google_storage_bucket.{documents}"
    );
}

// ---------------------------------------------------------------- monitoring (issue #18)

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use keshless_ops::runtime::worker::{run_outcome, JOB_FAILED, JOB_INTERRUPTED, JOB_OUTCOME_FIELDS, JOB_SUCCEEDED};

/// Values for evaluating monitoring.tf's expressions the way Terraform would:
/// `var.*` at their defaults (or `overrides`), every `local.*` and every
/// top-level resource attribute that evaluates (as `KIND.NAME.ATTR`),
/// `path.module`, and the functions the files call.
struct Values {
    vars: hcl::Map<String, hcl::Value>,
    locals: hcl::Map<String, hcl::Value>,
    resources: hcl::Map<String, hcl::Value>,
}

impl Values {
    fn load(infra: &Infra, overrides: &[(&str, hcl::Value)]) -> Values {
        let mut values = Values {
            vars: hcl::Map::new(),
            locals: hcl::Map::new(),
            resources: hcl::Map::new(),
        };
        for (_, block) in infra
            .blocks
            .iter()
            .filter(|(_, block)| block.identifier() == "variable")
        {
            let name = label(block, 0).expect("variable name").to_owned();
            let value = match overrides.iter().find(|(overridden, _)| *overridden == name) {
                Some((_, value)) => Some(value.clone()),
                None => attribute(block.body(), "default").map(|default| {
                    default
                        .evaluate(&Context::new())
                        .unwrap_or_else(|error| panic!("var.{name}: {error}"))
                }),
            };
            if let Some(value) = value {
                values.vars.insert(name, value);
            }
        }
        // Locals and resources refer to each other: evaluate until nothing new evaluates.
        loop {
            let before = values.locals.len() + values.resources.values().map(count_attributes).sum::<usize>();
            let context = values.context(None);
            let mut locals = values.locals.clone();
            let mut resources = values.resources.clone();
            for (_, block) in &infra.blocks {
                match block.identifier() {
                    "locals" => {
                        for attribute in block.body().attributes() {
                            if let Ok(value) = attribute.expr().evaluate(&context) {
                                locals.insert(attribute.key().to_owned(), value);
                            }
                        }
                    }
                    "resource" => {
                        let (kind, name) = (label(block, 0).expect("kind"), label(block, 1).expect("name"));
                        let entry = resources
                            .entry(kind.to_owned())
                            .or_insert_with(|| hcl::Value::Object(hcl::Map::new()));
                        let hcl::Value::Object(of_kind) = entry else {
                            unreachable!()
                        };
                        let entry = of_kind
                            .entry(name.to_owned())
                            .or_insert_with(|| hcl::Value::Object(hcl::Map::new()));
                        let hcl::Value::Object(attributes) = entry else {
                            unreachable!()
                        };
                        for attribute in block.body().attributes() {
                            if let Ok(value) = attribute.expr().evaluate(&context) {
                                attributes.insert(attribute.key().to_owned(), value);
                            }
                        }
                    }
                    _ => {}
                }
            }
            values.locals = locals;
            values.resources = resources;
            let after = values.locals.len() + values.resources.values().map(count_attributes).sum::<usize>();
            if after == before {
                return values;
            }
        }
    }

    /// A context with `each` set when given (a `for_each` instance).
    fn context(&self, each: Option<(&str, &hcl::Value)>) -> Context<'static> {
        let mut context = Context::new();
        context.declare_var("var", hcl::Value::Object(self.vars.clone()));
        context.declare_var("local", hcl::Value::Object(self.locals.clone()));
        for (kind, resources) in &self.resources {
            context.declare_var(kind.as_str(), resources.clone());
        }
        let mut path = hcl::Map::new();
        path.insert(
            "module".to_owned(),
            hcl::Value::from(repository().join("infra").display().to_string()),
        );
        context.declare_var("path", hcl::Value::Object(path));
        if let Some((key, value)) = each {
            let mut object = hcl::Map::new();
            object.insert("key".to_owned(), hcl::Value::from(key));
            object.insert("value".to_owned(), value.clone());
            context.declare_var("each", hcl::Value::Object(object));
        }
        context.declare_func(
            "merge",
            FuncDef::builder()
                .variadic_param(ParamType::object_of(ParamType::Any))
                .build(merge),
        );
        context.declare_func(
            "concat",
            FuncDef::builder()
                .variadic_param(ParamType::array_of(ParamType::Any))
                .build(concat),
        );
        context.declare_func("toset", FuncDef::builder().param(ParamType::Any).build(toset));
        context.declare_func("file", FuncDef::builder().param(ParamType::String).build(read_file));
        context.declare_func(
            "join",
            FuncDef::builder()
                .param(ParamType::String)
                .param(ParamType::array_of(ParamType::String))
                .build(join),
        );
        context.declare_func(
            "jsonencode",
            FuncDef::builder().param(ParamType::Any).build(json_encode),
        );
        context.declare_func(
            "base64encode",
            FuncDef::builder().param(ParamType::String).build(base64_encode),
        );
        context
    }

    /// `KIND.NAME.ATTR` as evaluated, as a string.
    fn resource_string(&self, kind: &str, name: &str, attribute_name: &str) -> String {
        self.resources
            .get(kind)
            .and_then(|of_kind| of_kind.as_object())
            .and_then(|of_kind| of_kind.get(name))
            .and_then(|attributes| attributes.as_object())
            .and_then(|attributes| attributes.get(attribute_name))
            .and_then(|value| value.as_str())
            .unwrap_or_else(|| panic!("{kind}.{name}.{attribute_name} does not evaluate to a string"))
            .to_owned()
    }

    fn local(&self, name: &str) -> &hcl::Value {
        self.locals
            .get(name)
            .unwrap_or_else(|| panic!("local.{name} does not evaluate"))
    }

    /// Evaluates `expression` (from a resource with `for_each` when `each` is given) to a string.
    fn string(&self, expression: &Expression, each: Option<(&str, &hcl::Value)>, what: &str) -> String {
        match expression.evaluate(&self.context(each)) {
            Ok(hcl::Value::String(text)) => text,
            Ok(other) => panic!("{what} is not a string: {other:?}"),
            Err(error) => panic!("{what} does not evaluate: {error}"),
        }
    }
}

fn count_attributes(of_kind: &hcl::Value) -> usize {
    of_kind.as_object().map_or(0, |resources| {
        resources
            .values()
            .map(|attributes| attributes.as_object().map_or(0, |attributes| attributes.len()))
            .sum()
    })
}

fn merge(arguments: FuncArgs) -> Result<hcl::Value, String> {
    let mut merged = hcl::Map::new();
    for argument in arguments.iter() {
        merged.extend(argument.as_object().expect("checked").clone());
    }
    Ok(hcl::Value::Object(merged))
}

fn concat(arguments: FuncArgs) -> Result<hcl::Value, String> {
    Ok(hcl::Value::Array(
        arguments
            .iter()
            .flat_map(|argument| argument.as_array().expect("checked").clone())
            .collect(),
    ))
}

fn toset(arguments: FuncArgs) -> Result<hcl::Value, String> {
    Ok(arguments[0].clone())
}

fn join(arguments: FuncArgs) -> Result<hcl::Value, String> {
    let separator = arguments[0].as_str().expect("checked");
    let items: Vec<&str> = arguments[1]
        .as_array()
        .expect("checked")
        .iter()
        .map(|item| item.as_str().expect("checked"))
        .collect();
    Ok(hcl::Value::from(items.join(separator)))
}

fn json_encode(arguments: FuncArgs) -> Result<hcl::Value, String> {
    serde_json::to_string(&arguments[0])
        .map(hcl::Value::from)
        .map_err(|error| error.to_string())
}

fn base64_encode(arguments: FuncArgs) -> Result<hcl::Value, String> {
    use base64::Engine as _;
    Ok(hcl::Value::from(
        base64::engine::general_purpose::STANDARD.encode(arguments[0].as_str().expect("checked")),
    ))
}

fn read_file(arguments: FuncArgs) -> Result<hcl::Value, String> {
    let path = arguments[0].as_str().expect("checked");
    std::fs::read_to_string(path)
        .map(hcl::Value::from)
        .map_err(|error| format!("{path}: {error}"))
}

/// The nested block path `identifiers` of `body`, each exactly once.
fn nested<'a>(body: &'a Body, identifiers: &[&'a str], what: &str) -> &'a Body {
    identifiers
        .iter()
        .fold(body, |body, identifier| only_block(body, identifier, what))
}

fn alert_policies(infra: &Infra) -> BTreeMap<String, &Body> {
    let policies = infra.resources("google_monitoring_alert_policy");
    assert!(!policies.is_empty(), "infra/ has no google_monitoring_alert_policy");
    policies
}

/// `for_each` instances of a resource as (key, each.value); one `None` key for a plain resource.
fn instances(values: &Values, body: &Body, what: &str) -> Vec<(Option<String>, hcl::Value)> {
    match attribute(body, "for_each") {
        None => vec![(None, hcl::Value::Null)],
        Some(expression) => match expression.evaluate(&values.context(None)) {
            Ok(hcl::Value::Object(instances)) => instances.into_iter().map(|(key, value)| (Some(key), value)).collect(),
            other => panic!("{what}: for_each must evaluate to an object, got {other:?}"),
        },
    }
}

#[test]
fn every_scheduled_job_has_a_freshness_policy_with_its_status_window() {
    let infra = Infra::load();
    let databases = ["keshless", "ledger"];
    let values = Values::load(
        &infra,
        &[(
            "databases",
            hcl::Value::from(
                databases
                    .iter()
                    .map(|database| hcl::Value::from(*database))
                    .collect::<Vec<_>>(),
            ),
        )],
    );
    // The window of each job is status's default limit (src/schedule.rs).
    let hours = values
        .local("freshness_hours")
        .as_object()
        .expect("freshness_hours is an object");
    let expected: BTreeMap<&str, u64> = SCHEDULE
        .iter()
        .map(|row| (row.job, row.max_age.as_secs() / 3600))
        .collect();
    let found: BTreeMap<&str, u64> = hours
        .iter()
        .map(|(job, hours)| (job.as_str(), hours.as_u64().expect("whole hours")))
        .collect();
    assert_eq!(
        found, expected,
        "local.freshness_hours must be status's FRESHNESS_* defaults"
    );
    for row in SCHEDULE {
        assert_eq!(row.max_age.as_secs() % 3600, 0, "{}: a whole number of hours", row.job);
    }

    let policy = infra.resource("google_monitoring_alert_policy", "freshness");
    assert!(
        is_reference(
            required(policy, "for_each", "freshness policy"),
            "local.freshness_checks"
        ),
        "the freshness policy has one instance per local.freshness_checks entry"
    );
    let metric = values.resource_string("google_logging_metric", "job_outcomes", "name");
    let query = required(
        nested(
            policy,
            &["conditions", "condition_prometheus_query_language"],
            "freshness policy",
        ),
        "query",
        "freshness condition",
    );
    // Every job of the schedule once, postgres-backup once per database.
    let mut expected_queries = BTreeMap::new();
    for row in SCHEDULE {
        let selectors: Vec<(String, String)> = if row.job == "postgres-backup" {
            databases
                .iter()
                .map(|database| {
                    (
                        format!("postgres-backup:{database}"),
                        format!("job=\"postgres-backup\",database=\"{database}\""),
                    )
                })
                .collect()
        } else {
            vec![(row.job.to_owned(), format!("job=\"{}\"", row.job))]
        };
        for (key, selector) in selectors {
            expected_queries.insert(
                key,
                format!(
                    "absent_over_time(logging_googleapis_com:user_{metric}{{monitored_resource=\"cloud_run_worker_pool\",outcome=\"{}\",{selector}}}[{}h])",
                    run_outcome::SUCCEEDED,
                    row.max_age.as_secs() / 3600
                ),
            );
        }
    }
    let mut found_queries = BTreeMap::new();
    for (key, each) in instances(&values, policy, "freshness policy") {
        let key = key.expect("for_each key");
        let text = values.string(query, Some((&key, &each)), &format!("freshness[{key}] query"));
        found_queries.insert(key, text);
    }
    assert_eq!(found_queries, expected_queries);
}

/// `jsonPayload.NAME` field names a filter or extractor reads.
fn payload_fields(text: &str) -> Vec<String> {
    text.match_indices("jsonPayload.")
        .map(|(index, marker)| {
            text[index + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The quoted values a filter compares `jsonPayload.FIELD` with:
/// `FIELD="a"` or `FIELD=("a" OR "b")`.
fn compared_values(filter: &str, field: &str) -> Vec<String> {
    let marker = format!("jsonPayload.{field}=");
    let mut found = Vec::new();
    for (index, _) in filter.match_indices(&marker) {
        let rest = &filter[index + marker.len()..];
        let operand = match rest.strip_prefix('(') {
            Some(group) => &group[..group.find(')').expect("closing parenthesis")],
            None => &rest[..rest[1..].find('"').map_or(rest.len(), |end| end + 2)],
        };
        found.extend(operand.split('"').skip(1).step_by(2).map(str::to_owned));
    }
    found
}

#[test]
fn log_filters_name_the_fields_and_messages_the_worker_logs() {
    let infra = Infra::load();
    let values = Values::load(&infra, &[]);
    let messages = [JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED];
    let mut allowed_fields: Vec<&str> = JOB_OUTCOME_FIELDS.to_vec();
    allowed_fields.push("message");
    let jobs: BTreeSet<&str> = SCHEDULE.iter().map(|row| row.job).collect();
    let (pool, _) = infra
        .resources("google_cloud_run_v2_worker_pool")
        .into_iter()
        .next()
        .expect("the worker pool");
    let pool_name = values.resource_string("google_cloud_run_v2_worker_pool", &pool, "name");

    // Every filter over the worker's logs: the log-based metrics' and the log-match conditions'.
    let mut filters = Vec::new();
    for (name, metric) in infra.resources("google_logging_metric") {
        filters.push((
            format!("google_logging_metric.{name}"),
            values.string(required(metric, "filter", &name), None, &name),
        ));
    }
    for (name, policy) in alert_policies(&infra) {
        for condition in blocks(policy, "conditions") {
            for matched in blocks(condition.body(), "condition_matched_log") {
                let what = format!("google_monitoring_alert_policy.{name}");
                let filter = values.string(required(matched.body(), "filter", &what), None, &what);
                if filter.contains("jsonPayload.") {
                    filters.push((what, filter));
                }
            }
        }
    }
    assert!(filters.len() >= 4, "{filters:#?}");
    for (what, filter) in &filters {
        assert!(
            filter.contains(&format!("resource.labels.worker_pool_name=\"{pool_name}\"")),
            "{what} must read the worker pool's logs: {filter}"
        );
        for field in payload_fields(filter) {
            assert!(
                allowed_fields.contains(&field.as_str()),
                "{what} filters on jsonPayload.{field}, which the worker does not log: {filter}"
            );
        }
        let compared = compared_values(filter, "message");
        assert!(
            !compared.is_empty(),
            "{what} must select the job outcome lines by message: {filter}"
        );
        for message in &compared {
            assert!(
                messages.contains(&message.as_str()),
                "{what}: message {message:?} is not one the worker logs ({messages:?})"
            );
        }
        for outcome in compared_values(filter, "outcome") {
            assert!(
                run_outcome::ALL.contains(&outcome.as_str()),
                "{what}: outcome {outcome:?} is not one of {:?}",
                run_outcome::ALL
            );
        }
        for job in compared_values(filter, "job") {
            assert!(jobs.contains(job.as_str()), "{what}: unknown job {job:?}");
        }
    }
    // The outcome counter sees every run's last line, with the three labels.
    let outcomes = infra.resource("google_logging_metric", "job_outcomes");
    let filter = values.string(
        required(outcomes, "filter", "job_outcomes"),
        None,
        "job_outcomes filter",
    );
    let mut compared = compared_values(&filter, "message");
    compared.sort();
    let mut expected: Vec<String> = messages.iter().map(|message| message.to_string()).collect();
    expected.sort();
    assert_eq!(compared, expected, "job_outcomes must count every run's last line");

    for (name, metric) in infra.resources("google_logging_metric") {
        let descriptor = only_block(metric, "metric_descriptor", &name);
        let labels: BTreeSet<String> = blocks(descriptor, "labels")
            .map(|label| literal_string(required(label.body(), "key", &name), "label key"))
            .collect();
        let extractors = object_entries(required(metric, "label_extractors", &name), "label_extractors");
        assert_eq!(
            extractors.keys().cloned().collect::<BTreeSet<_>>(),
            labels,
            "{name}: one extractor per label"
        );
        let mut extracted: Vec<String> = extractors
            .values()
            .map(|extractor| literal_string(extractor, "label extractor"))
            .collect();
        if let Some(value) = attribute(metric, "value_extractor") {
            extracted.push(literal_string(value, "value_extractor"));
        }
        for extractor in extracted {
            let fields = payload_fields(&extractor);
            assert!(
                extractor.starts_with("EXTRACT(jsonPayload.") && fields.len() == 1,
                "{name}: {extractor}"
            );
            assert!(
                JOB_OUTCOME_FIELDS.contains(&fields[0].as_str()),
                "{name} extracts jsonPayload.{}, not a field of {JOB_OUTCOME_FIELDS:?}",
                fields[0]
            );
        }
        if name == "job_outcomes" {
            assert_eq!(
                labels,
                BTreeSet::from(["job".to_owned(), "database".to_owned(), "outcome".to_owned()])
            );
        }
    }
    // The worker logs at info, where the success lines are.
    let (_, environment) = worker_environment(&infra);
    assert!(
        environment
            .get("RUST_LOG")
            .is_some_and(|filter| filter.split(',').any(|directive| directive == "info")),
        "the worker's RUST_LOG must let info lines (job succeeded) through: {environment:?}"
    );
}

#[test]
fn pubsub_policies_watch_the_subscriptions_the_code_reads() {
    let infra = Infra::load();
    let values = Values::load(&infra, &[]);
    let code = code_pubsub();
    // (policy, subscription, metric, threshold): the DLQ `dlq list` reads
    // holding anything for 5 min; the worker's oldest message older than 2 h.
    for (policy, subscription, metric, threshold) in [
        (
            "dead_letters",
            code.dead_letter_subscription.as_str(),
            "pubsub.googleapis.com/subscription/num_undelivered_messages",
            0.0,
        ),
        (
            "worker_stalled",
            code.subscription.as_str(),
            "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
            7200.0,
        ),
    ] {
        let body = infra.resource("google_monitoring_alert_policy", policy);
        let condition = nested(body, &["conditions", "condition_threshold"], policy);
        let filter = values.string(required(condition, "filter", policy), None, policy);
        assert!(
            filter.contains(&format!("resource.labels.subscription_id=\"{subscription}\"")),
            "{policy}: {filter}"
        );
        assert!(
            filter.contains(&format!("metric.type=\"{metric}\"")),
            "{policy}: {filter}"
        );
        let value = literal_string(required(condition, "threshold_value", policy), "threshold_value");
        assert_eq!(value.parse::<f64>().unwrap(), threshold, "{policy}");
        assert_eq!(
            literal_string(required(condition, "comparison", policy), "comparison"),
            "COMPARISON_GT"
        );
        assert_eq!(
            duration_seconds(
                &literal_string(required(condition, "duration", policy), "duration"),
                policy
            ),
            300.0
        );
    }
}

/// The `### Heading` sections of the runbook, by heading.
fn runbook_sections() -> BTreeMap<String, String> {
    let runbook = runbook();
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in runbook.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            if let Some((name, text)) = current.take() {
                sections.insert(name, text);
            }
            current = Some((heading.trim().to_owned(), String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((name, text)) = current {
        sections.insert(name, text);
    }
    sections
}

#[test]
fn every_alert_policy_notifies_the_channels_and_names_a_runbook_section_and_its_first_command() {
    let infra = Infra::load();
    let values = Values::load(&infra, &[]);
    let sections = runbook_sections();
    // The channels: one email channel per address, plus the given channel ids.
    let channels = hcl::format::to_string(infra.local("notification_channels")).expect("format");
    assert!(
        channels.contains("google_monitoring_notification_channel.email")
            && channels.contains("var.alert_notification_channels"),
        "local.notification_channels must join the email channels and var.alert_notification_channels: {channels}"
    );
    let email = infra.resource("google_monitoring_notification_channel", "email");
    let for_each = hcl::format::to_string(required(email, "for_each", "email channel")).expect("format");
    assert!(
        for_each.contains("var.alert_emails"),
        "one email channel per address of var.alert_emails, not {for_each}"
    );

    for (name, policy) in alert_policies(&infra) {
        let what = format!("google_monitoring_alert_policy.{name}");
        assert!(
            is_reference(
                required(policy, "notification_channels", &what),
                "local.notification_channels"
            ),
            "{what} must notify local.notification_channels"
        );
        let content = required(only_block(policy, "documentation", &what), "content", &what);
        for (key, each) in instances(&values, policy, &what) {
            let text = values.string(content, key.as_deref().map(|key| (key, &each)), &what);
            let heading = text
                .split("section \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| {
                    panic!("{what}: the documentation must name a runbook section (section \"...\"): {text}")
                });
            let section = sections.get(heading).unwrap_or_else(|| {
                panic!(
                    "{what} names README section {heading:?}; the runbook has {:?}",
                    sections.keys()
                )
            });
            let command = text
                .split("First command: `")
                .nth(1)
                .and_then(|rest| rest.split('`').next())
                .unwrap_or_else(|| {
                    panic!("{what}: the documentation must give the first command (First command: `...`): {text}")
                });
            // In that section's shell block, so the runbook test checks it parses.
            assert!(
                runbook_commands(section).iter().any(|line| line == command),
                "{what}: `{command}` is not a command of README section {heading:?}"
            );
        }
    }
}

#[test]
fn the_dashboard_parses_and_reads_only_metrics_defined_in_infra() {
    let infra = Infra::load();
    let values = Values::load(&infra, &[]);
    let code = code_pubsub();
    let dashboard = infra.resource("google_monitoring_dashboard", "operations");
    let text = values.string(
        required(dashboard, "dashboard_json", "dashboard"),
        None,
        "dashboard_json",
    );
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard.json is JSON");

    // What infra/ defines: its log-based metrics (with their labels) and the
    // Google metrics its alert policies watch.
    let mut user_metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, metric) in infra.resources("google_logging_metric") {
        let metric_name = values.string(required(metric, "name", &name), None, &name);
        let labels = blocks(only_block(metric, "metric_descriptor", &name), "labels")
            .map(|label| literal_string(required(label.body(), "key", &name), "label key"))
            .collect();
        user_metrics.insert(metric_name, labels);
    }
    let mut policy_filters = String::new();
    for (name, policy) in alert_policies(&infra) {
        for condition in blocks(policy, "conditions") {
            for threshold in blocks(condition.body(), "condition_threshold") {
                policy_filters.push_str(&values.string(required(threshold.body(), "filter", &name), None, &name));
            }
        }
    }

    let mut filters = Vec::new();
    let mut queries = Vec::new();
    fn walk(value: &serde_json::Value, filters: &mut Vec<String>, queries: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(object) => {
                for (key, value) in object {
                    match (key.as_str(), value) {
                        ("filter", serde_json::Value::String(text)) => filters.push(text.clone()),
                        ("prometheusQuery", serde_json::Value::String(text)) => queries.push(text.clone()),
                        _ => walk(value, filters, queries),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, filters, queries)),
            _ => {}
        }
    }
    walk(&json, &mut filters, &mut queries);
    assert!(!filters.is_empty() && !queries.is_empty(), "{json:#}");

    let mut used = BTreeSet::new();
    for filter in &filters {
        let metric = filter
            .split("metric.type=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("dashboard filter without metric.type: {filter}"));
        used.insert(metric.to_owned());
        match metric.strip_prefix("logging.googleapis.com/user/") {
            Some(name) => {
                let labels = user_metrics.get(name).unwrap_or_else(|| {
                    panic!(
                        "the dashboard reads {metric}, which infra/ does not define ({:?})",
                        user_metrics.keys()
                    )
                });
                for (index, _) in filter.match_indices("metric.label.\"") {
                    let label: String = filter[index + 14..].chars().take_while(|c| *c != '"').collect();
                    assert!(labels.contains(&label), "{metric} has no label {label:?}");
                }
            }
            None => assert!(
                policy_filters.contains(&format!("metric.type=\"{metric}\"")),
                "the dashboard reads {metric}, which no alert policy of infra/ watches"
            ),
        }
        if let Some(rest) = filter.split("subscription_id=\"").nth(1) {
            let subscription = rest.split('"').next().unwrap();
            assert!(
                [code.subscription.as_str(), code.dead_letter_subscription.as_str()].contains(&subscription),
                "the dashboard reads subscription {subscription:?}"
            );
        }
    }
    for query in &queries {
        let names: Vec<&str> = query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            // Metric names; `[35d:5m]` (a subquery range) is not one.
            .filter(|word| word.contains(':') && word.starts_with(|c: char| c.is_ascii_alphabetic()))
            .collect();
        assert!(!names.is_empty(), "{query}");
        for name in names {
            let metric = name
                .strip_prefix("logging_googleapis_com:user_")
                .unwrap_or_else(|| panic!("the dashboard's PromQL reads {name}, not a log-based metric of infra/"));
            assert!(
                user_metrics.contains_key(metric),
                "the dashboard's PromQL reads {name}, not defined in infra/"
            );
            used.insert(format!("logging.googleapis.com/user/{metric}"));
        }
    }
    // Outcomes, durations, sizes, dead-letter depth (and the age chart's outcomes).
    for metric in user_metrics.keys() {
        assert!(
            used.contains(&format!("logging.googleapis.com/user/{metric}")),
            "the dashboard does not chart {metric}"
        );
    }
    assert!(used.contains("pubsub.googleapis.com/subscription/num_undelivered_messages"));
    assert!(filters
        .iter()
        .any(|filter| filter.contains(&format!("subscription_id=\"{}\"", code.dead_letter_subscription))));
}

#[test]
fn alerts_need_somebody_to_notify() {
    let infra = Infra::load();
    let metric = infra.resource("google_logging_metric", "job_outcomes");
    let precondition = nested(metric, &["lifecycle", "precondition"], "job_outcomes");
    let condition = hcl::format::to_string(required(precondition, "condition", "precondition")).unwrap();
    assert!(
        condition.contains("var.alert_emails")
            && condition.contains("var.alert_notification_channels")
            && condition.contains("> 0"),
        "{condition}"
    );
}

// ---------------------------------------------------------------- databases

/// The `DATABASES` the worker pool's environment evaluates to.
fn worker_databases(infra: &Infra, values: &Values) -> String {
    worker_variable(infra, values, "DATABASES")
}

/// What the worker pool's env `name` evaluates to under `values`.
fn worker_variable(infra: &Infra, values: &Values, name: &str) -> String {
    let pools = infra.resources("google_cloud_run_v2_worker_pool");
    let pool = pools.values().next().expect("one pool");
    let container = nested(pool, &["template", "containers"], "worker pool");
    let env = blocks(container, "env")
        .find(|env| attribute(env.body(), "name").and_then(literal).as_deref() == Some(name))
        .unwrap_or_else(|| panic!("the worker pool sets {name}"));
    values.string(required(env.body(), "value", name), None, name)
}

/// Every database of `var.databases` gets its own daily Cloud Scheduler job,
/// whose message names it in the parameter that divides the job's period, so
/// each is backed up once a day under its own key; the worker's DATABASES is
/// the same list, so it accepts every one of them.
#[test]
fn each_database_has_its_scheduler_job_and_the_worker_backs_up_exactly_those() {
    let infra = Infra::load();
    let databases = hcl::Value::Array(vec![hcl::Value::from("keshless"), hcl::Value::from("ledger")]);
    let values = Values::load(&infra, &[("databases", databases)]);
    let row = SCHEDULE
        .iter()
        .find(|row| row.job == "postgres-backup")
        .expect("scheduled");
    let scope = row.scope.expect("postgres-backup is divided by its database");
    let job = infra.resource("google_cloud_scheduler_job", "postgres_backup");
    let for_each = required(job, "for_each", "google_cloud_scheduler_job.postgres_backup")
        .evaluate(&values.context(None))
        .expect("for_each evaluates");
    let instances: Vec<String> = match for_each {
        hcl::Value::Array(items) => items.iter().map(|item| item.as_str().unwrap().to_owned()).collect(),
        hcl::Value::Object(items) => items.keys().cloned().collect(),
        other => panic!("for_each is {other:?}"),
    };
    assert_eq!(instances, ["keshless", "ledger"], "one scheduler job per database");
    let target = only_block(job, "pubsub_target", "postgres_backup");
    let mut names = BTreeSet::new();
    for database in &instances {
        let each = Some((database.as_str(), &hcl::Value::from(database.as_str())));
        names.insert(values.string(required(job, "name", "name"), each, "name"));
        let data = values.string(required(target, "data", "data"), each, "data");
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .expect("base64 data");
        let message: serde_json::Value = serde_json::from_slice(&decoded).expect("JSON data");
        assert_eq!(
            message,
            serde_json::json!({ "params": { scope: database } }),
            "the message of {database}'s job names it as params.{scope}"
        );
    }
    assert_eq!(names.len(), 2, "scheduler job names are unique: {names:?}");
    let listed = worker_databases(&infra, &values);
    assert_eq!(listed, "keshless,ledger");
    let config = keshless_ops::config::Config::from_vars([
        ("JOB_SECRET", "stand-in"),
        ("SECRETS_ENCRYPTION_KEY", "stand-in-key-of-at-least-32-characters"),
        ("DATABASE_URL", "postgres://worker@db/keshless"),
        ("GCS_BACKUPS_BUCKET", "keshless-backups"),
        ("GCS_DOCUMENTS_BUCKET", "keshless-documents"),
        ("SECRETS_ENV_PREFIX", "APP_"),
        ("DATABASES", listed.as_str()),
    ])
    .expect("the worker accepts the list");
    assert_eq!(config.databases, ["keshless", "ledger"]);
}
