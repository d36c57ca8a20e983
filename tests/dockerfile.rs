//! The `Dockerfile` checked against the code (issue #10): Docker cannot run
//! here, so this reads the instructions and checks the stages, the cached
//! dependency layer, the non-root user, the entry point, the health check and
//! that the image's `pg_dump` is the major version the code supports.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser as _;
use keshless_ops::config::POSTGRES_SERVER_MAJOR_VERSION;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One instruction: `RUN`, `COPY`, ... with its arguments, continuations joined.
#[derive(Debug, Clone, PartialEq)]
struct Instruction {
    keyword: String,
    arguments: String,
}

/// The instructions of a Dockerfile, comments and blank lines dropped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut result = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (pending.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head.trim_end());
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let line = std::mem::take(&mut pending);
                let (keyword, arguments) = line.split_once(char::is_whitespace).unwrap_or((line.as_str(), ""));
                result.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    arguments: arguments.trim().to_owned(),
                });
            }
        }
    }
    result
}

/// A build stage: its base image (global ARGs substituted), name and instructions.
#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|instruction| instruction.keyword == keyword)
            .map(|instruction| instruction.arguments.as_str())
            .collect()
    }

    fn position(&self, predicate: impl Fn(&Instruction) -> bool) -> Option<usize> {
        self.instructions.iter().position(predicate)
    }
}

struct Dockerfile {
    /// `ARG NAME=default` before the first `FROM`.
    global_arguments: HashMap<String, String>,
    stages: Vec<Stage>,
}

fn substitute(text: &str, arguments: &HashMap<String, String>) -> String {
    let mut result = text.to_owned();
    for (name, value) in arguments {
        result = result
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    result
}

fn parse(text: &str) -> Dockerfile {
    let mut global_arguments = HashMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions(text) {
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.arguments.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_keyword, name] if as_keyword.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                [_] => None,
                _ => panic!("unexpected FROM {:?}", instruction.arguments),
            };
            stages.push(Stage {
                image: substitute(words[0], &global_arguments),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(instruction);
        } else if instruction.keyword == "ARG" {
            let (name, default) = instruction
                .arguments
                .split_once('=')
                .unwrap_or((&instruction.arguments, ""));
            global_arguments.insert(name.to_owned(), default.to_owned());
        }
    }
    Dockerfile {
        global_arguments,
        stages,
    }
}

fn dockerfile() -> Dockerfile {
    let path = repository().join("Dockerfile");
    parse(&std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display())))
}

fn exec_form(arguments: &str, what: &str) -> Vec<String> {
    serde_json::from_str(arguments)
        .unwrap_or_else(|error| panic!("{what} {arguments} must use the exec form [\"...\"]: {error}"))
}

#[test]
fn builds_with_cargo_in_a_rust_image_and_caches_the_dependencies() {
    let dockerfile = dockerfile();
    assert!(dockerfile.stages.len() >= 2, "the Dockerfile must be multi-stage");
    let build = &dockerfile.stages[0];
    assert!(
        build.image.starts_with("rust:"),
        "the build stage must use the official rust image, found {}",
        build.image
    );
    assert_eq!(
        build.name.as_deref(),
        Some("build"),
        "the first stage must be named `build`"
    );

    // The image's Rust must be at least the crate's rust-version.
    let manifest = std::fs::read_to_string(repository().join("Cargo.toml")).expect("read Cargo.toml");
    let required = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("Cargo.toml has a rust-version");
    let version = |text: &str| -> (u32, u32) {
        let mut parts = text.split(['.', '-']).map(|part| part.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    let image_version = build.image.trim_start_matches("rust:");
    assert!(
        version(image_version) >= version(&required),
        "rust:{image_version} is older than Cargo.toml's rust-version {required}"
    );

    // Manifests first, a cargo build against them, only then the sources.
    let manifests = build
        .position(|instruction| {
            instruction.keyword == "COPY"
                && instruction.arguments.contains("Cargo.toml")
                && instruction.arguments.contains("Cargo.lock")
        })
        .expect("the build stage copies Cargo.toml and Cargo.lock");
    let sources = build
        .position(|instruction| instruction.keyword == "COPY" && instruction.arguments.starts_with("src"))
        .expect("the build stage copies src");
    let dependency_build = build
        .position(|instruction| instruction.keyword == "RUN" && instruction.arguments.contains("cargo build"))
        .expect("the build stage runs cargo build");
    assert!(
        manifests < dependency_build && dependency_build < sources,
        "dependencies must be built after copying the manifests and before copying src/, \
         so the layer is cached while only sources change"
    );
    let final_build = build.instructions[sources..]
        .iter()
        .find(|instruction| instruction.keyword == "RUN" && instruction.arguments.contains("cargo build"))
        .expect("the crate is built after src/ is copied");
    assert!(
        final_build.arguments.contains("--release") && final_build.arguments.contains("--locked"),
        "the binary must be built with --release --locked"
    );
    // Migrations are embedded at compile time.
    assert!(
        build
            .all("COPY")
            .iter()
            .any(|arguments| arguments.starts_with("migrations")),
        "the build stage must copy migrations/ (embedded by refinery)"
    );
}

#[test]
fn runs_on_slim_debian_as_a_non_root_user() {
    let dockerfile = dockerfile();
    let runtime = dockerfile.stages.last().expect("a final stage");
    assert!(
        runtime.image.starts_with("debian:") && runtime.image.ends_with("-slim"),
        "the runtime stage must be debian:*-slim, found {}",
        runtime.image
    );
    assert!(
        runtime
            .all("COPY")
            .iter()
            .any(|arguments| arguments.starts_with("--from=build") && arguments.contains("keshless-ops")),
        "the runtime stage must copy the keshless-ops binary from the build stage"
    );

    let users = runtime.all("USER");
    let user = users.last().expect("the runtime stage must set USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !["root", "0", ""].contains(&name),
        "the container must not run as root (USER {user})"
    );
    assert!(
        runtime
            .all("RUN")
            .iter()
            .any(|arguments| arguments.contains("useradd") && arguments.contains(name)),
        "the runtime stage must create the user {name}"
    );
    let user_position = runtime
        .position(|instruction| instruction.keyword == "USER")
        .expect("USER");
    let entrypoint_position = runtime
        .position(|instruction| instruction.keyword == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert!(user_position < entrypoint_position, "USER must come before ENTRYPOINT");
}

#[test]
fn entrypoint_is_keshless_ops_and_the_default_command_is_the_worker() {
    let dockerfile = dockerfile();
    let runtime = dockerfile.stages.last().expect("a final stage");
    let entrypoint = exec_form(runtime.all("ENTRYPOINT").last().expect("ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(entrypoint, ["keshless-ops"]);
    let command = exec_form(runtime.all("CMD").last().expect("CMD"), "CMD");
    assert_eq!(command, ["worker"]);
    let invocation: Vec<&str> = entrypoint.iter().chain(&command).map(String::as_str).collect();
    keshless_ops::cli::Cli::try_parse_from(&invocation)
        .unwrap_or_else(|error| panic!("{invocation:?} is not a valid command: {error}"));
}

#[test]
fn healthcheck_hits_healthz_with_a_tool_the_image_installs() {
    let dockerfile = dockerfile();
    let runtime = dockerfile.stages.last().expect("a final stage");
    let healthcheck = runtime.all("HEALTHCHECK");
    let healthcheck = healthcheck.last().expect("the runtime stage needs a HEALTHCHECK");
    assert!(
        healthcheck.contains("/healthz"),
        "HEALTHCHECK must hit /healthz: {healthcheck}"
    );
    assert!(
        healthcheck.contains("${PORT}") || healthcheck.contains("$PORT"),
        "HEALTHCHECK must follow $PORT: {healthcheck}"
    );
    assert!(healthcheck.contains("curl"), "HEALTHCHECK uses curl: {healthcheck}");
    assert!(
        runtime
            .all("RUN")
            .iter()
            .any(|arguments| arguments.contains("apt-get install") && arguments.contains(" curl")),
        "curl must be installed in the runtime stage for the HEALTHCHECK"
    );
    let port_default = runtime
        .all("ENV")
        .iter()
        .find_map(|arguments| arguments.strip_prefix("PORT="))
        .map(str::to_owned);
    assert_eq!(
        port_default.as_deref(),
        Some("8080"),
        "ENV PORT must be the worker's default port"
    );
}

#[test]
fn pg_dump_is_the_supported_postgresql_major_from_the_postgresql_repository() {
    let dockerfile = dockerfile();
    let major = dockerfile
        .global_arguments
        .get("POSTGRES_MAJOR")
        .expect("the Dockerfile declares ARG POSTGRES_MAJOR=<major> before the first FROM");
    assert_eq!(
        major,
        &POSTGRES_SERVER_MAJOR_VERSION.to_string(),
        "the image's postgresql-client major must be config::POSTGRES_SERVER_MAJOR_VERSION \
         (pg_dump refuses a server newer than itself)"
    );
    let runtime = dockerfile.stages.last().expect("a final stage");
    assert!(
        runtime.all("ARG").contains(&"POSTGRES_MAJOR"),
        "the runtime stage must redeclare ARG POSTGRES_MAJOR to use it"
    );
    let runs = runtime.all("RUN").join("\n");
    for needed in [
        "postgresql-client-${POSTGRES_MAJOR}",
        "apt.postgresql.org",
        "signed-by=",
        "ca-certificates",
        "--no-install-recommends",
    ] {
        assert!(runs.contains(needed), "the runtime stage's RUN must contain {needed:?}");
    }
    // The build fails rather than ship a pg_dump of another major.
    assert!(
        runs.contains("pg_dump --version") && runs.contains("${POSTGRES_MAJOR}"),
        "the runtime stage should check pg_dump --version against POSTGRES_MAJOR"
    );
}

#[test]
fn dockerignore_keeps_the_build_context_small_but_complete() {
    let text = std::fs::read_to_string(repository().join(".dockerignore")).expect("read .dockerignore");
    let ignored: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    for needed in ["target", ".git"] {
        assert!(ignored.contains(&needed), ".dockerignore must exclude {needed}");
    }
    // Everything the build stage copies must stay in the context.
    let dockerfile = dockerfile();
    for arguments in dockerfile.stages[0].all("COPY") {
        let words: Vec<&str> = arguments.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                !ignored.iter().any(|pattern| pattern.trim_end_matches('/') == *source),
                ".dockerignore excludes {source}, which the Dockerfile copies"
            );
            assert!(
                repository().join(source).exists(),
                "the Dockerfile copies {source}, which does not exist"
            );
        }
    }
}

#[test]
fn the_parser_joins_continuations_and_substitutes_global_arguments() {
    let parsed = parse("# c\nARG V=3\nFROM img:${V} AS one\nRUN a \\\n    b\n\nFROM other\nUSER x\n");
    assert_eq!(parsed.global_arguments["V"], "3");
    assert_eq!(parsed.stages.len(), 2);
    assert_eq!(parsed.stages[0].image, "img:3");
    assert_eq!(parsed.stages[0].name.as_deref(), Some("one"));
    assert_eq!(parsed.stages[0].all("RUN"), ["a b"]);
    assert_eq!(parsed.stages[1].all("USER"), ["x"]);
}
