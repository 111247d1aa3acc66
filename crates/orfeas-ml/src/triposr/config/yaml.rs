//! `config.yaml` text → a JSON value tree with OmegaConf's `${a.b}`
//! interpolations resolved, ready for serde.

use yaml_rust2::{Yaml, YamlLoader};

/// Parses one YAML document and resolves its interpolations.
pub(super) fn load_resolved(yaml: &str) -> Result<serde_json::Value, String> {
    let tree = yaml_to_json(&single_document(yaml)?)?;
    resolve_interpolations(&tree, &tree, 0)
}

/// The string at `image_tokenizer.pretrained_model_name_or_path`, if any
/// (read before the rest of the file is checked).
pub(super) fn vit_name(yaml: &str) -> Result<Option<String>, String> {
    let doc = single_document(yaml)?;
    Ok(
        match &doc["image_tokenizer"]["pretrained_model_name_or_path"] {
            Yaml::String(s) => Some(s.clone()),
            _ => None,
        },
    )
}

fn single_document(yaml: &str) -> Result<Yaml, String> {
    let mut docs = YamlLoader::load_from_str(yaml).map_err(|e| format!("not valid YAML: {e}"))?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        0 => Err("the file is empty".to_owned()),
        _ => Err("expected one YAML document, found several".to_owned()),
    }
}

/// YAML → JSON value (the config only holds maps, lists and scalars).
fn yaml_to_json(y: &Yaml) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => {
            let v = y
                .as_f64()
                .ok_or_else(|| format!("'{text}' is not a number"))?;
            serde_json::Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| format!("'{text}' is not a finite number"))?
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => {
            Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => return Err(format!("unsupported map key {other:?}")),
                };
                out.insert(key, yaml_to_json(v)?);
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".to_owned()),
        Yaml::BadValue => return Err("unreadable value".to_owned()),
    })
}

/// Replaces OmegaConf's `${a.b.c}` references with the value they name: a
/// string that is exactly one reference takes the value's type, references
/// inside longer strings are spliced in as text. Resolvers (`${oc.env:...}`) are refused.
fn resolve_interpolations(
    value: &serde_json::Value,
    root: &serde_json::Value,
    depth: usize,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    if depth > 16 {
        return Err("interpolations nest too deep (a cycle?)".to_owned());
    }
    Ok(match value {
        Value::String(s) if s.contains("${") => {
            let whole = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'));
            if let Some(path) = whole.filter(|p| !p.contains("${") && !p.contains('}')) {
                let target = lookup(root, path)?;
                resolve_interpolations(target, root, depth + 1)?
            } else {
                let mut out = String::new();
                let mut rest = s.as_str();
                while let Some(start) = rest.find("${") {
                    out.push_str(&rest[..start]);
                    let after = &rest[start + 2..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| format!("unclosed interpolation in '{s}'"))?;
                    let target =
                        resolve_interpolations(lookup(root, &after[..end])?, root, depth + 1)?;
                    match target {
                        Value::String(t) => out.push_str(&t),
                        other => out.push_str(&other.to_string()),
                    }
                    rest = &after[end + 1..];
                }
                out.push_str(rest);
                Value::String(out)
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve_interpolations(v, root, depth))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.clone(), resolve_interpolations(v, root, depth)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

fn lookup<'a>(root: &'a serde_json::Value, path: &str) -> Result<&'a serde_json::Value, String> {
    if path.contains(':') {
        return Err(format!(
            "interpolation '${{{path}}}' uses an OmegaConf resolver, which is not supported; write the value itself"
        ));
    }
    path.split('.').try_fold(root, |node, key| {
        node.get(key)
            .ok_or_else(|| format!("interpolation '${{{path}}}' names a key that does not exist"))
    })
}
