//! Resource names: parsing and validating `projects/{project}`,
//! `projects/{project}/topics/{topic}` and
//! `projects/{project}/subscriptions/{subscription}` the way Pub/Sub does, so a
//! malformed name is refused with `INVALID_ARGUMENT` instead of silently
//! creating a resource production would reject.

use super::state::EmulatorError;

/// What Pub/Sub writes into a subscription's `topic` field once its topic is
/// deleted; the subscription keeps existing, detached.
pub const DELETED_TOPIC: &str = "_deleted-topic_";

/// Which collection a resource name belongs to; used for parsing and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Topic,
    Subscription,
}

impl ResourceKind {
    fn collection(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topics",
            ResourceKind::Subscription => "subscriptions",
        }
    }

    /// The singular noun used in error messages.
    pub fn noun(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Subscription => "subscription",
        }
    }
}

/// A validated `projects/{project}/{collection}/{id}` name, split in parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    pub project: String,
    pub id: String,
}

/// Parses and validates a full topic or subscription name.
pub fn parse_resource_name(kind: ResourceKind, name: &str) -> Result<ResourceName, EmulatorError> {
    let invalid = |reason: &str| {
        EmulatorError::InvalidArgument(format!(
            "invalid {} name {name:?}: {reason} (expected projects/{{project}}/{}/{{id}})",
            kind.noun(),
            kind.collection()
        ))
    };
    let parts: Vec<&str> = name.split('/').collect();
    let [projects, project, collection, id] = parts.as_slice() else {
        return Err(invalid("wrong number of path segments"));
    };
    if *projects != "projects" || *collection != kind.collection() {
        return Err(invalid("wrong collection"));
    }
    validate_project_id(project).map_err(&invalid)?;
    validate_resource_id(id).map_err(&invalid)?;
    Ok(ResourceName {
        project: (*project).to_string(),
        id: (*id).to_string(),
    })
}

/// Parses `projects/{project}` as sent by the List methods.
pub fn parse_project_name(name: &str) -> Result<String, EmulatorError> {
    let invalid = |reason: &str| {
        EmulatorError::InvalidArgument(format!(
            "invalid project name {name:?}: {reason} (expected projects/{{project}})"
        ))
    };
    match name.split_once('/') {
        Some(("projects", project)) => {
            validate_project_id(project).map_err(&invalid)?;
            Ok(project.to_string())
        }
        _ => Err(invalid("wrong format")),
    }
}

fn validate_project_id(project: &str) -> Result<(), &'static str> {
    if project.is_empty() {
        return Err("the project is empty");
    }
    if project.contains('/') {
        return Err("the project contains '/'");
    }
    Ok(())
}

/// The rules Pub/Sub documents for topic and subscription ids: start with a
/// letter, 3 to 255 characters from `[A-Za-z0-9-_.~+%]`, never `goog…`.
fn validate_resource_id(id: &str) -> Result<(), &'static str> {
    if !(3..=255).contains(&id.len()) {
        return Err("the id must be 3 to 255 characters long");
    }
    if !id.starts_with(|character: char| character.is_ascii_alphabetic()) {
        return Err("the id must start with a letter");
    }
    if id.to_ascii_lowercase().starts_with("goog") {
        return Err("the id must not start with \"goog\"");
    }
    let allowed = |character: char| character.is_ascii_alphanumeric() || "-_.~+%".contains(character);
    if !id.chars().all(allowed) {
        return Err("the id may contain only letters, digits and - _ . ~ + %");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_are_validated() {
        let cases: &[(ResourceKind, &str, bool)] = &[
            (ResourceKind::Topic, "projects/p/topics/orders", true),
            (ResourceKind::Topic, "projects/my-project/topics/a.b~c+d%e_f-g", true),
            (ResourceKind::Subscription, "projects/p/subscriptions/orders-sub", true),
            (ResourceKind::Topic, "projects/p/subscriptions/orders", false),
            (ResourceKind::Subscription, "projects/p/topics/orders", false),
            (ResourceKind::Topic, "projects//topics/orders", false),
            (ResourceKind::Topic, "projects/p/topics/or", false),
            (ResourceKind::Topic, "projects/p/topics/1orders", false),
            (ResourceKind::Topic, "projects/p/topics/google-things", false),
            (ResourceKind::Topic, "projects/p/topics/with space", false),
            (ResourceKind::Topic, "projects/p/topics/orders/extra", false),
            (ResourceKind::Topic, "orders", false),
            (ResourceKind::Topic, "", false),
        ];
        for (kind, name, valid) in cases {
            assert_eq!(parse_resource_name(*kind, name).is_ok(), *valid, "{kind:?} {name:?}");
        }
    }

    #[test]
    fn parsed_names_keep_project_and_id() {
        let parsed = parse_resource_name(ResourceKind::Subscription, "projects/p1/subscriptions/sub1").unwrap();
        assert_eq!(parsed.project, "p1");
        assert_eq!(parsed.id, "sub1");
    }

    #[test]
    fn project_names_are_validated() {
        assert_eq!(parse_project_name("projects/p").unwrap(), "p");
        assert!(parse_project_name("projects/").is_err());
        assert!(parse_project_name("p").is_err());
        assert!(parse_project_name("projects/p/topics").is_err());
    }
}
