//! `policy`: storing, printing, listing and removing a tenant's Cedar policies, and checking
//! a policy file offline (positioned diagnostics).

use std::path::Path;
use std::sync::Arc;

use policy_sync::diagnostics::Problem;
use policy_sync::store;

use super::args::PolicyCommand;
use super::common::{pool, read};
use super::failure::{Exit, Failure, Outcome};

pub(crate) async fn run(url: Option<&String>, command: PolicyCommand) -> Outcome {
    match command {
        PolicyCommand::Validate {
            file,
            schema,
            tenant,
        } => {
            let schema = match (schema, &tenant) {
                (Some(path), _) => Some((path.display().to_string(), read(&path)?)),
                (None, Some(t)) => store::get_schema(&pool(url)?, t)
                    .await?
                    .map(|text| (format!("schema of tenant {t}"), text)),
                (None, None) => None,
            };
            validate_policy_file(
                &file,
                schema.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            )
        }
        PolicyCommand::Put {
            file,
            id,
            disabled,
            tenant,
        } => {
            let rows: Vec<_> = policies_from_file(&file, id.as_deref())?
                .into_iter()
                .map(|(id, text)| policy_sync::source::PolicyRow {
                    id,
                    text,
                    enabled: !disabled,
                })
                .collect();
            let pool = pool(url)?;
            let changed = store::put_policies(&pool, &tenant.tenant, &rows).await?;
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            Ok(format!(
                "{} in tenant {}: {}",
                if changed { "stored" } else { "unchanged" },
                tenant.tenant,
                ids.join(", ")
            ))
        }
        PolicyCommand::Get { id, tenant } => {
            let p = store::get_policy(&pool(url)?, &tenant.tenant, &id).await?;
            Ok(format!(
                "{}{}",
                if p.enabled { "" } else { "// disabled\n" },
                p.text
            ))
        }
        PolicyCommand::List { tenant } => {
            let all = store::list_policies(&pool(url)?, &tenant.tenant).await?;
            Ok(all
                .iter()
                .map(|p| {
                    format!(
                        "{}\t{}",
                        p.id,
                        if p.enabled { "enabled" } else { "disabled" }
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        PolicyCommand::Rm { id, tenant } => {
            store::delete_policy(&pool(url)?, &tenant.tenant, &id).await?;
            Ok(format!("policy {id} removed from tenant {}", tenant.tenant))
        }
    }
}

/// Validates a policy file; problems are positioned in the file.
fn validate_policy_file(file: &Path, schema: Option<(&str, &str)>) -> Outcome {
    let (name, source, set) = parse_policy_file(file)?;
    // Policies are named by their `@id` annotations, as in bundles.
    let mut named = cedar_policy::PolicySet::new();
    for p in set.policies() {
        let p = match portcullis_core::bundle::id_annotation(p) {
            Some(id) => p.new_id(cedar_policy::PolicyId::new(id)),
            None => p.clone(),
        };
        let id = p.id().to_string();
        named.add(p).map_err(|_| {
            Failure::new(
                Exit::Invalid,
                format!("{name}: two policies share the id {id:?}"),
            )
        })?;
    }
    let set = named;
    let count = set.policies().count();
    if let Some((schema_name, schema)) = schema {
        let schema_src: Arc<str> = Arc::from(schema);
        let (schema, _) =
            cedar_policy::Schema::from_cedarschema_str(schema).map_err(|e| Failure {
                code: Exit::Invalid,
                message: "the schema does not parse".into(),
                problems: Problem::from_diagnostic(schema_name, &schema_src, &e),
            })?;
        let result = cedar_policy::Validator::new(schema)
            .validate(&set, cedar_policy::ValidationMode::Strict);
        let problems: Vec<Problem> = result
            .validation_errors()
            .flat_map(|e| Problem::from_diagnostic(&name, &source, e))
            .collect();
        if !problems.is_empty() {
            return Err(Failure {
                code: Exit::Invalid,
                message: format!("{name} does not validate against the schema"),
                problems,
            });
        }
        return Ok(format!(
            "{name}: {count} policies parse and validate against the schema"
        ));
    }
    Ok(format!("{name}: {count} policies parse (no schema given)"))
}

/// A policy file: its name, its text and its policies; parse errors positioned in the file.
fn parse_policy_file(file: &Path) -> Result<(String, Arc<str>, cedar_policy::PolicySet), Failure> {
    use std::str::FromStr as _;
    let text = read(file)?;
    let name = file.display().to_string();
    let source: Arc<str> = Arc::from(text.as_str());
    let set = cedar_policy::PolicySet::from_str(&text).map_err(|e| Failure {
        code: Exit::Invalid,
        message: format!("{name} does not parse"),
        problems: Problem::from_diagnostic(&name, &source, &e),
    })?;
    Ok((name, source, set))
}

/// Policies from a file: (id, text) pairs; ids from `--id` or `@id` annotations.
fn policies_from_file(file: &Path, id: Option<&str>) -> Result<Vec<(String, String)>, Failure> {
    let (name, _, set) = parse_policy_file(file)?;
    let policies: Vec<_> = set.policies().collect();
    if set.templates().next().is_some() {
        return Err(Failure::new(
            Exit::Usage,
            format!("{name}: templates are not supported"),
        ));
    }
    match (id, policies.as_slice()) {
        (_, []) => Err(Failure::new(Exit::Usage, format!("{name} holds no policy"))),
        (Some(id), [one]) => Ok(vec![(id.to_owned(), one.to_string())]),
        (Some(_), _) => Err(Failure::new(
            Exit::Usage,
            format!("{name} holds {} policies; --id names one (annotate each with @id instead)", policies.len()),
        )),
        (None, many) => many
            .iter()
            .map(|p| {
                portcullis_core::bundle::id_annotation(p)
                    .map(|a| (a.to_owned(), p.to_string()))
                    .ok_or_else(|| {
                        Failure::new(Exit::Usage, format!("{name}: a policy has no @id annotation (or give --id for a single policy)"))
                    })
            })
            .collect(),
    }
}
