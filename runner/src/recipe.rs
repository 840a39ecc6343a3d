//! Recipes: the TOML a student submits in a recipe lab, and the schema the lab
//! declares for it.
//!
//! A lab's `[recipe]` lists parameters (`[[recipe.param]]`), each with a type,
//! a range or choices, a default and help text. Only the standard parameters
//! in [`STANDARD_PARAMS`] exist, each with hard bounds that a lab cannot widen.
//! Strings are only ever one of a fixed list of choices, so a recipe can never
//! name a path. [`RecipeSchema`] serialises to JSON for the web form, which runs
//! the same checks in the browser.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::lab::LabError;

/// The type of a standard parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    Float,
    Int,
    Bool,
    Choice,
    Multi,
}

/// A parameter the training programs understand, with hard bounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StandardParam {
    pub name: &'static str,
    pub ty: ParamType,
    /// Inclusive hard lower bound (numbers).
    pub lo: f64,
    /// Inclusive hard upper bound (numbers).
    pub hi: f64,
    /// Allowed choices for `choice`/`multi` parameters; empty = the lab chooses
    /// (layer groups, LoRA target modules), but each must be a plain identifier.
    pub choices: &'static [&'static str],
    pub doc: &'static str,
}

/// Largest step count any recipe may ask for.
pub const MAX_STEPS: f64 = 200_000.0;

/// Every parameter a recipe can set.
pub const STANDARD_PARAMS: &[StandardParam] = &[
    StandardParam { name: "learning_rate", ty: ParamType::Float, lo: 1e-8, hi: 10.0, choices: &[], doc: "peak learning rate of AdamW" },
    StandardParam { name: "schedule", ty: ParamType::Choice, lo: 0.0, hi: 0.0, choices: &["constant", "linear", "cosine"], doc: "learning-rate schedule after warmup" },
    StandardParam { name: "warmup_steps", ty: ParamType::Int, lo: 0.0, hi: MAX_STEPS, choices: &[], doc: "steps of linear warmup from 0 to the learning rate" },
    StandardParam { name: "steps", ty: ParamType::Int, lo: 1.0, hi: MAX_STEPS, choices: &[], doc: "optimizer steps (exclusive with epochs)" },
    StandardParam { name: "epochs", ty: ParamType::Int, lo: 1.0, hi: 10_000.0, choices: &[], doc: "passes over the training split (exclusive with steps)" },
    StandardParam { name: "batch_size", ty: ParamType::Int, lo: 1.0, hi: 4096.0, choices: &[], doc: "examples per step" },
    StandardParam { name: "weight_decay", ty: ParamType::Float, lo: 0.0, hi: 1.0, choices: &[], doc: "decoupled weight decay of AdamW (weights only, not biases)" },
    StandardParam { name: "grad_clip", ty: ParamType::Float, lo: 0.0, hi: 1e6, choices: &[], doc: "global gradient-norm clip; 0 turns clipping off" },
    StandardParam { name: "seed", ty: ParamType::Int, lo: 0.0, hi: 4_294_967_295.0, choices: &[], doc: "seed of initialisation, shuffling and dropout" },
    StandardParam { name: "frozen", ty: ParamType::Multi, lo: 0.0, hi: 0.0, choices: &[], doc: "layer groups kept fixed during training" },
    StandardParam { name: "lora_rank", ty: ParamType::Int, lo: 0.0, hi: 1024.0, choices: &[], doc: "LoRA rank; 0 trains the weights directly" },
    StandardParam { name: "lora_alpha", ty: ParamType::Float, lo: 1e-6, hi: 1e4, choices: &[], doc: "LoRA scaling alpha (scale = alpha / rank)" },
    StandardParam { name: "lora_targets", ty: ParamType::Multi, lo: 0.0, hi: 0.0, choices: &[], doc: "modules that get LoRA adapters" },
    StandardParam { name: "dropout", ty: ParamType::Float, lo: 0.0, hi: 0.95, choices: &[], doc: "dropout probability in the trainable layers" },
    StandardParam { name: "early_stopping_patience", ty: ParamType::Int, lo: 0.0, hi: 10_000.0, choices: &[], doc: "stop after this many evaluations without improvement and keep the best weights; 0 = off" },
    StandardParam { name: "eval_every", ty: ParamType::Int, lo: 1.0, hi: MAX_STEPS, choices: &[], doc: "steps between evaluations on the validation split" },
];

/// Look up a standard parameter.
pub fn standard_param(name: &str) -> Option<&'static StandardParam> {
    STANDARD_PARAMS.iter().find(|p| p.name == name)
}

/// One parameter of a lab's recipe schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParamSpec {
    Float {
        name: String,
        min: f64,
        max: f64,
        default: f64,
        help: String,
        /// A hint for the form: show a log-scale slider.
        #[serde(default)]
        log_scale: bool,
    },
    Int {
        name: String,
        min: i64,
        max: i64,
        default: i64,
        help: String,
    },
    Bool {
        name: String,
        default: bool,
        help: String,
    },
    Choice {
        name: String,
        choices: Vec<String>,
        default: String,
        help: String,
    },
    Multi {
        name: String,
        choices: Vec<String>,
        default: Vec<String>,
        help: String,
    },
}

impl ParamSpec {
    pub fn name(&self) -> &str {
        match self {
            ParamSpec::Float { name, .. }
            | ParamSpec::Int { name, .. }
            | ParamSpec::Bool { name, .. }
            | ParamSpec::Choice { name, .. }
            | ParamSpec::Multi { name, .. } => name,
        }
    }

    pub fn ty(&self) -> ParamType {
        match self {
            ParamSpec::Float { .. } => ParamType::Float,
            ParamSpec::Int { .. } => ParamType::Int,
            ParamSpec::Bool { .. } => ParamType::Bool,
            ParamSpec::Choice { .. } => ParamType::Choice,
            ParamSpec::Multi { .. } => ParamType::Multi,
        }
    }

    pub fn default_value(&self) -> Value {
        match self {
            ParamSpec::Float { default, .. } => Value::Float(*default),
            ParamSpec::Int { default, .. } => Value::Int(*default),
            ParamSpec::Bool { default, .. } => Value::Bool(*default),
            ParamSpec::Choice { default, .. } => Value::Choice(default.clone()),
            ParamSpec::Multi { default, .. } => Value::Multi(default.clone()),
        }
    }

    /// Check a TOML value against this parameter; the message names what was expected.
    pub fn check_value(&self, v: &toml::Value) -> Result<Value, String> {
        match self {
            ParamSpec::Float { min, max, .. } => {
                let x = match v {
                    toml::Value::Float(x) => *x,
                    toml::Value::Integer(i) => *i as f64,
                    other => return Err(format!("expected a number, found {}", other.type_str())),
                };
                if !x.is_finite() {
                    return Err(format!("expected a finite number, found {x}"));
                }
                if x < *min || x > *max {
                    return Err(format!(
                        "expected a number between {min} and {max}, found {x}"
                    ));
                }
                Ok(Value::Float(x))
            }
            ParamSpec::Int { min, max, .. } => {
                let x = match v {
                    toml::Value::Integer(i) => *i,
                    other => {
                        return Err(format!("expected an integer, found {}", other.type_str()))
                    }
                };
                if x < *min || x > *max {
                    return Err(format!(
                        "expected an integer between {min} and {max}, found {x}"
                    ));
                }
                Ok(Value::Int(x))
            }
            ParamSpec::Bool { .. } => match v {
                toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
                other => Err(format!(
                    "expected true or false, found {}",
                    other.type_str()
                )),
            },
            ParamSpec::Choice { choices, .. } => match v {
                toml::Value::String(s) if choices.contains(s) => Ok(Value::Choice(s.clone())),
                toml::Value::String(s) => Err(format!("expected one of {choices:?}, found {s:?}")),
                other => Err(format!(
                    "expected one of {choices:?}, found {}",
                    other.type_str()
                )),
            },
            ParamSpec::Multi { choices, .. } => {
                let arr = match v {
                    toml::Value::Array(a) => a,
                    other => {
                        return Err(format!(
                            "expected a list drawn from {choices:?}, found {}",
                            other.type_str()
                        ))
                    }
                };
                let mut out = Vec::new();
                for item in arr {
                    match item {
                        toml::Value::String(s) if choices.contains(s) => {
                            if out.contains(s) {
                                return Err(format!("{s:?} is listed twice"));
                            }
                            out.push(s.clone());
                        }
                        toml::Value::String(s) => {
                            return Err(format!("expected items from {choices:?}, found {s:?}"))
                        }
                        other => {
                            return Err(format!(
                                "expected items from {choices:?}, found {}",
                                other.type_str()
                            ))
                        }
                    }
                }
                Ok(Value::Multi(out))
            }
        }
    }
}

/// A lab's recipe schema (`[recipe]` in lab.toml).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeSchema {
    /// Parameters in the order the form shows them.
    #[serde(rename = "param")]
    pub params: Vec<ParamSpec>,
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !s.contains("..")
}

impl RecipeSchema {
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name() == name)
    }

    /// Check the schema itself (called when a lab is loaded).
    pub fn check(&self, file: &Path, supported: &[&str]) -> Result<(), LabError> {
        let mut seen = BTreeSet::new();
        for (i, p) in self.params.iter().enumerate() {
            let field = format!("recipe.param[{i}] ({})", p.name());
            let std = standard_param(p.name()).ok_or_else(|| {
                LabError::invalid(
                    file,
                    &field,
                    format!(
                        "a standard parameter name, one of {:?}",
                        STANDARD_PARAMS.iter().map(|s| s.name).collect::<Vec<_>>()
                    ),
                )
            })?;
            if !supported.contains(&p.name()) {
                return Err(LabError::invalid(
                    file,
                    &field,
                    format!("a parameter the program supports, one of {supported:?}"),
                ));
            }
            if !seen.insert(p.name().to_string()) {
                return Err(LabError::invalid(
                    file,
                    &field,
                    "each parameter declared once",
                ));
            }
            if p.ty() != std.ty {
                return Err(LabError::invalid(
                    file,
                    &field,
                    format!(
                        "type = \"{}\"",
                        serde_json::to_value(std.ty)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    ),
                ));
            }
            let help = match p {
                ParamSpec::Float { help, .. }
                | ParamSpec::Int { help, .. }
                | ParamSpec::Bool { help, .. }
                | ParamSpec::Choice { help, .. }
                | ParamSpec::Multi { help, .. } => help,
            };
            if help.trim().is_empty() {
                return Err(LabError::invalid(file, &field, "a non-empty help text"));
            }
            let range_ok = |min: f64, max: f64| {
                min.is_finite() && max.is_finite() && min <= max && min >= std.lo && max <= std.hi
            };
            match p {
                ParamSpec::Float { min, max, .. } if !range_ok(*min, *max) => {
                    return Err(LabError::invalid(
                        file,
                        &field,
                        format!("min ≤ max within the hard bounds [{}, {}]", std.lo, std.hi),
                    ));
                }
                ParamSpec::Int { min, max, .. } if !range_ok(*min as f64, *max as f64) => {
                    return Err(LabError::invalid(
                        file,
                        &field,
                        format!("min ≤ max within the hard bounds [{}, {}]", std.lo, std.hi),
                    ));
                }
                ParamSpec::Choice { choices, .. } | ParamSpec::Multi { choices, .. } => {
                    if choices.is_empty() && matches!(p, ParamSpec::Choice { .. }) {
                        return Err(LabError::invalid(file, &field, "at least one choice"));
                    }
                    for c in choices {
                        let allowed = if std.choices.is_empty() {
                            is_ident(c)
                        } else {
                            std.choices.contains(&c.as_str())
                        };
                        if !allowed {
                            return Err(LabError::invalid(
                                file,
                                &field,
                                if std.choices.is_empty() {
                                    "choices that are plain identifiers (letters, digits, _ - .), never paths".to_string()
                                } else {
                                    format!("choices drawn from {:?}", std.choices)
                                },
                            ));
                        }
                    }
                }
                _ => {}
            }
            p.check_value(&value_to_toml(&p.default_value()))
                .map_err(|m| LabError::invalid(file, format!("{field}.default"), m))?;
        }
        Ok(())
    }

    /// Validate a student's recipe (TOML text). `file` is used in messages.
    /// All problems are reported at once.
    pub fn validate(&self, text: &str, file: &str) -> Result<Recipe, RecipeErrors> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| RecipeErrors {
            file: file.to_string(),
            issues: vec![RecipeIssue {
                param: String::new(),
                message: format!("not valid TOML: {}", e.message()),
            }],
        })?;
        self.validate_table(&table, file)
    }

    /// Validate an already parsed TOML table.
    pub fn validate_table(&self, table: &toml::Table, file: &str) -> Result<Recipe, RecipeErrors> {
        let mut issues = Vec::new();
        let mut values = BTreeMap::new();
        let mut explicit = BTreeSet::new();
        for (key, v) in table {
            match self.get(key) {
                None => issues.push(RecipeIssue {
                    param: key.clone(),
                    message: format!(
                        "unknown parameter; this lab accepts {:?}",
                        self.params.iter().map(ParamSpec::name).collect::<Vec<_>>()
                    ),
                }),
                Some(spec) => match spec.check_value(v) {
                    Ok(val) => {
                        values.insert(key.clone(), val);
                        explicit.insert(key.clone());
                    }
                    Err(message) => issues.push(RecipeIssue {
                        param: key.clone(),
                        message,
                    }),
                },
            }
        }
        if explicit.contains("steps") && explicit.contains("epochs") {
            issues.push(RecipeIssue {
                param: "epochs".into(),
                message: "give either steps or epochs, not both".into(),
            });
        }
        if let (Some(Value::Int(w)), Some(Value::Int(s))) =
            (values.get("warmup_steps"), values.get("steps"))
        {
            if w > s {
                issues.push(RecipeIssue {
                    param: "warmup_steps".into(),
                    message: format!("expected at most steps ({s}), found {w}"),
                });
            }
        }
        if !issues.is_empty() {
            return Err(RecipeErrors {
                file: file.to_string(),
                issues,
            });
        }
        for p in &self.params {
            values
                .entry(p.name().to_string())
                .or_insert_with(|| p.default_value());
        }
        // Steps and epochs both declared: the one the student gave wins.
        if explicit.contains("steps") {
            values.remove("epochs");
        } else if explicit.contains("epochs") {
            values.remove("steps");
        } else if values.contains_key("steps") {
            values.remove("epochs");
        }
        Ok(Recipe { values, explicit })
    }
}

/// A validated parameter value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Choice(String),
    Multi(Vec<String>),
}

fn value_to_toml(v: &Value) -> toml::Value {
    match v {
        Value::Float(x) => toml::Value::Float(*x),
        Value::Int(i) => toml::Value::Integer(*i),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Choice(s) => toml::Value::String(s.clone()),
        Value::Multi(items) => {
            toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect())
        }
    }
}

/// A recipe checked against a schema, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    values: BTreeMap<String, Value>,
    explicit: BTreeSet<String>,
}

impl Recipe {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.values.get(name)? {
            Value::Float(x) => Some(*x),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.values.get(name)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.values.get(name)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn choice(&self, name: &str) -> Option<&str> {
        match self.values.get(name)? {
            Value::Choice(s) => Some(s),
            _ => None,
        }
    }
    pub fn multi(&self, name: &str) -> Option<&[String]> {
        match self.values.get(name)? {
            Value::Multi(v) => Some(v),
            _ => None,
        }
    }
    /// All values, defaults included (recorded with each run).
    pub fn values(&self) -> &BTreeMap<String, Value> {
        &self.values
    }
    /// Whether the student set this parameter (rather than the default).
    pub fn is_explicit(&self, name: &str) -> bool {
        self.explicit.contains(name)
    }
}

/// One problem in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecipeIssue {
    /// The parameter concerned (empty for a syntax error).
    pub param: String,
    pub message: String,
}

/// All problems found in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
pub struct RecipeErrors {
    pub file: String,
    pub issues: Vec<RecipeIssue>,
}

impl fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if issue.param.is_empty() {
                write!(f, "{}: {}", self.file, issue.message)?;
            } else {
                write!(
                    f,
                    "{}: parameter `{}`: {}",
                    self.file, issue.param, issue.message
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> RecipeSchema {
        let text = r#"
[[param]]
name = "learning_rate"
type = "float"
min = 1e-5
max = 1.0
default = 1e-3
help = "peak learning rate"
log_scale = true

[[param]]
name = "schedule"
type = "choice"
choices = ["constant", "cosine"]
default = "constant"
help = "schedule"

[[param]]
name = "steps"
type = "int"
min = 1
max = 2000
default = 100
help = "steps"

[[param]]
name = "epochs"
type = "int"
min = 1
max = 50
default = 5
help = "epochs"

[[param]]
name = "warmup_steps"
type = "int"
min = 0
max = 2000
default = 0
help = "warmup"

[[param]]
name = "frozen"
type = "multi"
choices = ["conv1", "conv2", "fc"]
default = []
help = "frozen groups"
"#;
        let s: RecipeSchema = toml::from_str(text).unwrap();
        s.check(
            Path::new("lab.toml"),
            &[
                "learning_rate",
                "schedule",
                "steps",
                "epochs",
                "warmup_steps",
                "frozen",
            ],
        )
        .unwrap();
        s
    }

    fn err(text: &str) -> RecipeErrors {
        schema().validate(text, "recipe.toml").unwrap_err()
    }

    #[test]
    fn defaults_fill_in() {
        let r = schema()
            .validate("learning_rate = 0.01", "recipe.toml")
            .unwrap();
        assert_eq!(r.float("learning_rate"), Some(0.01));
        assert_eq!(r.int("steps"), Some(100));
        assert_eq!(r.get("epochs"), None, "steps wins when neither is given");
        assert_eq!(r.choice("schedule"), Some("constant"));
        assert!(r.is_explicit("learning_rate") && !r.is_explicit("steps"));
    }

    #[test]
    fn epochs_replace_steps_when_given() {
        let r = schema().validate("epochs = 3", "r.toml").unwrap();
        assert_eq!(r.int("epochs"), Some(3));
        assert_eq!(r.get("steps"), None);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("learning_rate = 0.01\nmomentum = 0.9");
        assert_eq!(e.issues.len(), 1);
        assert_eq!(e.issues[0].param, "momentum");
        assert!(
            e.to_string().contains("recipe.toml: parameter `momentum`"),
            "{e}"
        );
    }

    #[test]
    fn data_paths_cannot_be_named() {
        for text in [
            "data = \"/etc/passwd\"",
            "train_file = \"../hidden/test-labels.idx1\"",
        ] {
            let e = err(text);
            assert!(e.issues[0].message.contains("unknown parameter"), "{e}");
        }
        // A path in a string-valued parameter is not one of its choices.
        let e = err("schedule = \"../../hidden/test\"");
        assert_eq!(e.issues[0].param, "schedule");
        let e = err("frozen = [\"/etc/passwd\"]");
        assert_eq!(e.issues[0].param, "frozen");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = err("learning_rate = \"fast\"\nsteps = 1.5\nfrozen = \"conv1\"");
        let params: Vec<_> = e.issues.iter().map(|i| i.param.as_str()).collect();
        assert_eq!(params, vec!["frozen", "learning_rate", "steps"]);
        assert!(e.issues.iter().all(|i| i.message.starts_with("expected")));
    }

    #[test]
    fn nan_and_inf_are_rejected() {
        for v in ["nan", "inf", "-inf"] {
            let e = err(&format!("learning_rate = {v}"));
            assert_eq!(e.issues[0].param, "learning_rate");
            assert!(e.issues[0].message.contains("finite"), "{e}");
        }
    }

    #[test]
    fn out_of_range_and_huge_step_counts_are_rejected() {
        let e = err("learning_rate = 5.0");
        assert!(e.issues[0].message.contains("between"), "{e}");
        let e = err("steps = 10000000000");
        assert_eq!(e.issues[0].param, "steps");
        let e = err("steps = 0");
        assert_eq!(e.issues[0].param, "steps");
        let e = err("warmup_steps = 50\nsteps = 10");
        assert_eq!(e.issues[0].param, "warmup_steps");
    }

    #[test]
    fn steps_and_epochs_are_exclusive() {
        let e = err("steps = 10\nepochs = 2");
        assert_eq!(e.issues[0].param, "epochs");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = err("learning_rate = ");
        assert!(
            e.to_string().starts_with("recipe.toml: not valid TOML"),
            "{e}"
        );
    }

    #[test]
    fn schema_rejects_nonstandard_or_widened_params() {
        let bad = [
            "[[param]]\nname=\"data_dir\"\ntype=\"choice\"\nchoices=[\"a\"]\ndefault=\"a\"\nhelp=\"h\"",
            "[[param]]\nname=\"steps\"\ntype=\"int\"\nmin=1\nmax=100000000\ndefault=1\nhelp=\"h\"",
            "[[param]]\nname=\"frozen\"\ntype=\"multi\"\nchoices=[\"../x\"]\ndefault=[]\nhelp=\"h\"",
            "[[param]]\nname=\"learning_rate\"\ntype=\"int\"\nmin=1\nmax=2\ndefault=1\nhelp=\"h\"",
            "[[param]]\nname=\"learning_rate\"\ntype=\"float\"\nmin=0.1\nmax=0.2\ndefault=0.5\nhelp=\"h\"",
        ];
        for text in bad {
            let s: RecipeSchema = toml::from_str(text).unwrap();
            let r = s.check(
                Path::new("lab.toml"),
                &["data_dir", "steps", "frozen", "learning_rate"],
            );
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("lab.toml") && e.contains("recipe.param[0]"),
                "{e}"
            );
        }
        let unknown_field = "[[param]]\nname=\"steps\"\ntype=\"int\"\nmin=1\nmax=2\ndefault=1\nhelp=\"h\"\npath=\"x\"";
        assert!(toml::from_str::<RecipeSchema>(unknown_field).is_err());
    }

    #[test]
    fn schema_serialises_for_the_form() {
        let json = serde_json::to_value(schema()).unwrap();
        assert_eq!(json["param"][0]["type"], "float");
        assert_eq!(json["param"][0]["name"], "learning_rate");
        assert_eq!(json["param"][5]["choices"][1], "conv2");
    }
}
