//! The JSON schema of berth.toml for editors (taplo, Even Better TOML). Hand-written in
//! `berth.schema.json`; a test keeps it in step with [`crate::keys::KEYS`].

/// The schema text (JSON Schema draft-07).
pub fn json_schema() -> &'static str {
    include_str!("../berth.schema.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, KEYS};
    use serde_json::Value;

    /// The schema node describing a key path of [`KEYS`].
    fn node<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
        let mut cur = schema;
        for part in path.split('.') {
            cur = match part {
                "*" => cur.get("additionalProperties")?,
                p => match p.strip_suffix("[]") {
                    Some(name) => cur.get("properties")?.get(name)?.get("items")?,
                    None => cur.get("properties")?.get(p)?,
                },
            };
        }
        Some(cur)
    }

    #[test]
    fn schema_is_json() {
        let v: Value = serde_json::from_str(json_schema()).unwrap();
        assert_eq!(v["type"], "object");
    }

    #[test]
    fn every_known_key_is_in_the_schema() {
        let schema: Value = serde_json::from_str(json_schema()).unwrap();
        for spec in KEYS {
            let n = node(&schema, spec.path)
                .unwrap_or_else(|| panic!("`{}` is missing from berth.schema.json", spec.path));
            if let KeyType::Enum(values) = spec.ty {
                let in_schema: Vec<&str> = n["enum"]
                    .as_array()
                    .unwrap_or_else(|| panic!("`{}` has no enum in the schema", spec.path))
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(in_schema, values, "enum of `{}`", spec.path);
            }
        }
    }

    #[test]
    fn the_schema_has_no_key_the_validator_does_not_know() {
        let schema: Value = serde_json::from_str(json_schema()).unwrap();
        fn walk(v: &Value, path: String, out: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (k, child) in props {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(p.clone());
                    if let Some(items) =
                        child.get("items").filter(|i| i.get("properties").is_some())
                    {
                        walk(items, format!("{p}[]"), out);
                    } else if let Some(ap) =
                        child.get("additionalProperties").filter(|a| a.is_object())
                    {
                        walk(ap, format!("{p}.*"), out);
                    }
                    walk(child, p, out);
                }
            }
        }
        let mut found = Vec::new();
        walk(&schema, String::new(), &mut found);
        for p in found {
            assert!(
                KEYS.iter().any(|k| k.path == p),
                "berth.schema.json has `{p}`, which the validator does not know"
            );
        }
    }
}
