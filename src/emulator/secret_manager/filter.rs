//! The `filter` of Secret Manager's `list` calls (List-operation filtering,
//! AIP-160 in the subset Secret Manager documents): terms `FIELD OP VALUE`
//! with `=`, `!=`, `:` (has / contains), `<`, `<=`, `>`, `>=`; `*` as a
//! wildcard in values (`labels.env:*` = has the label); terms joined by
//! whitespace or `AND`, `OR` (binding tighter than `AND`, as AIP-160 says),
//! negated with `NOT` or `-`; values may be double-quoted.
//!
//! Fields for secrets: `name`, `labels.KEY`, `annotations.KEY`,
//! `create_time`, `expire_time`, `topics`; for versions: `name`, `state`,
//! `create_time`. Anything else is INVALID_ARGUMENT, as on the real service.

/// A parsed filter: a conjunction of disjunctions of terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    all_of: Vec<Vec<Term>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    negated: bool,
    field: String,
    operator: Operator,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    Has,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// What a term is evaluated against: a field's values (`None` = absent).
pub trait Filterable {
    /// The field's value(s); `Err` names an unknown field.
    fn field(&self, field: &str) -> Result<Option<Vec<String>>, String>;
}

impl Filter {
    /// Parses `text`; the error says what is wrong, for an INVALID_ARGUMENT message.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let tokens = tokenize(text)?;
        let mut all_of: Vec<Vec<Term>> = Vec::new();
        let mut index = 0;
        let mut pending_or = false;
        while index < tokens.len() {
            let token = &tokens[index];
            if token == "AND" {
                index += 1;
                continue;
            }
            if token == "OR" {
                if all_of.is_empty() {
                    return Err("OR without a term before it".into());
                }
                pending_or = true;
                index += 1;
                continue;
            }
            let mut negated = false;
            let mut token = token.clone();
            if token == "NOT" {
                negated = true;
                index += 1;
                token = tokens.get(index).cloned().ok_or("NOT without a term after it")?;
            } else if let Some(rest) = token.strip_prefix('-') {
                negated = true;
                token = rest.to_owned();
            }
            let term = parse_term(&token, negated)?;
            if pending_or {
                all_of.last_mut().expect("checked").push(term);
                pending_or = false;
            } else {
                all_of.push(vec![term]);
            }
            index += 1;
        }
        if pending_or {
            return Err("OR without a term after it".into());
        }
        Ok(Filter { all_of })
    }

    /// Checks every field name against `subject` without needing a match
    /// (so an unknown field fails even on an empty collection).
    pub fn validate(&self, known: &dyn Fn(&str) -> bool) -> Result<(), String> {
        for term in self.all_of.iter().flatten() {
            if !known(&term.field) {
                return Err(format!("unknown field {:?} in filter", term.field));
            }
        }
        Ok(())
    }

    pub fn matches(&self, subject: &dyn Filterable) -> Result<bool, String> {
        for any_of in &self.all_of {
            let mut matched = false;
            for term in any_of {
                if term.matches(subject)? {
                    matched = true;
                    break;
                }
            }
            if !matched {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Term {
    fn matches(&self, subject: &dyn Filterable) -> Result<bool, String> {
        let values = subject.field(&self.field)?;
        let result = match (self.operator, values) {
            (Operator::NotEquals, None) => true,
            (_, None) => false,
            (Operator::Has, Some(values)) => {
                self.value == "*" || values.iter().any(|value| contains_pattern(value, &self.value))
            }
            (Operator::Equals, Some(values)) => values.iter().any(|value| glob(value, &self.value)),
            (Operator::NotEquals, Some(values)) => !values.iter().any(|value| glob(value, &self.value)),
            (operator, Some(values)) => values.iter().any(|value| {
                let ordering = value.as_str().cmp(self.value.as_str());
                match operator {
                    Operator::Less => ordering.is_lt(),
                    Operator::LessOrEqual => ordering.is_le(),
                    Operator::Greater => ordering.is_gt(),
                    Operator::GreaterOrEqual => ordering.is_ge(),
                    _ => unreachable!("handled above"),
                }
            }),
        };
        Ok(result != self.negated)
    }
}

fn parse_term(token: &str, negated: bool) -> Result<Term, String> {
    const OPERATORS: [(&str, Operator); 7] = [
        ("!=", Operator::NotEquals),
        ("<=", Operator::LessOrEqual),
        (">=", Operator::GreaterOrEqual),
        ("=", Operator::Equals),
        (":", Operator::Has),
        ("<", Operator::Less),
        (">", Operator::Greater),
    ];
    // The first operator in the term splits it (values may contain `:` or
    // `=`); at one position the two-character operator wins.
    let found = OPERATORS
        .iter()
        .filter_map(|(symbol, operator)| token.find(symbol).map(|position| (position, *symbol, *operator)))
        .min_by_key(|(position, symbol, _)| (*position, std::cmp::Reverse(symbol.len())));
    let Some((position, symbol, operator)) = found else {
        return Err(format!(
            "filter term {token:?} has no operator (expected one of = != : < <= > >=)"
        ));
    };
    let field = token[..position].trim();
    let value = token[position + symbol.len()..].trim();
    if field.is_empty() || value.is_empty() {
        return Err(format!("incomplete filter term {token:?}"));
    }
    Ok(Term {
        negated,
        field: field.to_owned(),
        operator,
        value: value.trim_matches('"').to_owned(),
    })
}

/// Splits on whitespace outside double quotes; `a = b` is joined into one term.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut raw = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for character in text.chars() {
        match character {
            '"' => {
                quoted = !quoted;
                current.push(character);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    raw.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in filter".into());
    }
    if !current.is_empty() {
        raw.push(current);
    }
    // Re-join terms written with spaces around the operator: `labels.a = b`.
    let is_operator = |token: &str| ["=", "!=", ":", "<", "<=", ">", ">="].contains(&token);
    let mut tokens: Vec<String> = Vec::new();
    let mut index = 0;
    while index < raw.len() {
        if index + 1 < raw.len() && is_operator(&raw[index + 1]) {
            let value = raw.get(index + 2).ok_or("filter ends after an operator")?;
            tokens.push(format!("{}{}{}", raw[index], raw[index + 1], value));
            index += 3;
        } else {
            tokens.push(raw[index].clone());
            index += 1;
        }
    }
    Ok(tokens)
}

/// `=` with `*` wildcards.
fn glob(value: &str, pattern: &str) -> bool {
    if !pattern.contains('*') {
        return value == pattern;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = value;
    for (index, part) in parts.iter().enumerate() {
        if index == 0 {
            match rest.strip_prefix(part) {
                Some(after) => rest = after,
                None => return false,
            }
        } else if index == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(position) => rest = &rest[position + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// `:` on text: contains the value (wildcards allowed).
fn contains_pattern(value: &str, pattern: &str) -> bool {
    if pattern.contains('*') {
        glob(value, &format!("*{pattern}*"))
    } else {
        value.contains(pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Subject(BTreeMap<&'static str, &'static str>);

    impl Filterable for Subject {
        fn field(&self, field: &str) -> Result<Option<Vec<String>>, String> {
            if field == "bogus" {
                return Err("unknown field bogus".into());
            }
            Ok(self.0.get(field).map(|value| vec![value.to_string()]))
        }
    }

    #[test]
    fn terms_and_connectives() {
        let subject = Subject(BTreeMap::from([
            ("name", "projects/p/secrets/db-password"),
            ("labels.backup", "true"),
            ("labels.env", "prod"),
        ]));
        let cases = [
            ("labels.backup=true", true),
            ("labels.backup = true", true),
            ("labels.backup=false", false),
            ("labels.env:*", true),
            ("labels.team:*", false),
            ("name:db-", true),
            ("name:api", false),
            ("labels.backup=true AND labels.env=prod", true),
            ("labels.backup=true labels.env=dev", false),
            ("labels.env=dev OR labels.env=prod", true),
            ("NOT labels.env=dev", true),
            ("-labels.env=prod", false),
            ("labels.env!=prod", false),
            ("labels.team!=x", true),
            ("name=\"projects/p/secrets/db-*\"", true),
        ];
        for (filter, expected) in cases {
            let parsed = Filter::parse(filter).unwrap_or_else(|error| panic!("{filter}: {error}"));
            assert_eq!(parsed.matches(&subject).unwrap(), expected, "{filter}");
        }
        assert!(Filter::parse("labels.backup").unwrap_err().contains("no operator"));
        assert!(Filter::parse("OR a=b").is_err());
        assert!(Filter::parse("bogus=1").unwrap().matches(&subject).is_err());
    }
}
