//! Statements with parameters: `?` (JDBC, ADBC) and `$n` placeholders, their inferred types, and
//! binding values to them.
//!
//! ```text
//! "… drone_id = ? AND time > ?" ─number_placeholders─▶ "… drone_id = $1 AND time > $2"
//!        ─plan─▶ Statement { frame, parameters: [$1: Utf8, $2: Timestamp] } ─bind([v1, v2])─▶ DataFrame
//! ```

use std::collections::HashSet;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::{Error, Result, plain_schema};

/// Rewrites each `?` placeholder to `$1`, `$2`, … in order of appearance, so that positional
/// values bind to them. `?` inside strings, quoted identifiers and comments is left alone; SQL
/// the tokenizer rejects is returned unchanged for the planner to report.
pub fn number_placeholders(sql: &str) -> String {
    if !sql.contains('?') {
        return sql.to_string();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return sql.to_string();
    };
    let marks: HashSet<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    let mut out = String::with_capacity(sql.len() + 2 * marks.len());
    let (mut line, mut column, mut number) = (1u64, 1u64, 0usize);
    for ch in sql.chars() {
        if ch == '?' && marks.contains(&(line, column)) {
            number += 1;
            out.push('$');
            out.push_str(&number.to_string());
        } else {
            out.push(ch);
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    out
}

/// A planned read-only statement whose placeholders may still need values.
#[derive(Debug, Clone)]
pub struct Statement {
    frame: DataFrame,
    parameters: SchemaRef,
}

impl Statement {
    pub(crate) fn new(frame: DataFrame) -> Result<Self> {
        let fields = frame.logical_plan().get_parameter_fields()?;
        let mut parameters = Vec::with_capacity(fields.len());
        for position in 1..=fields.len() {
            let name = format!("${position}");
            let Some(field) = fields.get(&name) else {
                return Err(Error::Parameters(format!(
                    "placeholders must be numbered from $1 without gaps; {name} is missing"
                )));
            };
            // A type the planner could not infer is announced as text: every client can bind
            // a string, and the value is used as given.
            let data_type = field
                .as_ref()
                .map_or(DataType::Utf8, |f| f.data_type().clone());
            parameters.push(Field::new(name, data_type, true));
        }
        Ok(Self {
            frame,
            parameters: plain_schema(&Schema::new(parameters)),
        })
    }

    /// The columns of the result, in the plain types sent to clients.
    pub fn schema(&self) -> SchemaRef {
        plain_schema(self.frame.schema().as_arrow())
    }

    /// One field per placeholder, `$1` first, typed as the planner inferred them.
    pub fn parameters(&self) -> &SchemaRef {
        &self.parameters
    }

    /// The statement ready to run; an error names the parameters still unbound.
    pub fn into_frame(self) -> Result<DataFrame> {
        if self.parameters.fields().is_empty() {
            Ok(self.frame)
        } else {
            Err(Error::Parameters(format!(
                "the statement has {} parameter(s); bind values to them first",
                self.parameters.fields().len()
            )))
        }
    }

    /// The statement with `values[i]` in place of `$i+1`, each cast to its parameter's type.
    pub fn bind(self, values: Vec<ScalarValue>) -> Result<DataFrame> {
        let expected = self.parameters.fields().len();
        if values.len() != expected {
            return Err(Error::Parameters(format!(
                "the statement has {expected} parameter(s) but {} value(s) were bound",
                values.len()
            )));
        }
        let values = values
            .into_iter()
            .zip(self.parameters.fields())
            .map(|(value, field)| {
                if value.data_type() == *field.data_type() || value.is_null() {
                    return Ok(value);
                }
                value.cast_to(field.data_type()).map_err(|e| {
                    Error::Parameters(format!(
                        "parameter {} expects {}, and the value {value} does not convert: {}",
                        field.name(),
                        field.data_type(),
                        e.find_root()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.frame.with_param_values(values)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_placeholders() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b > ?"),
            "SELECT * FROM t WHERE a = $1 AND b > $2"
        );
        // Not inside strings, quoted identifiers or comments; lines are followed.
        assert_eq!(
            number_placeholders("SELECT '?', \"x?\" -- why?\nFROM t WHERE a = ?"),
            "SELECT '?', \"x?\" -- why?\nFROM t WHERE a = $1"
        );
        assert_eq!(number_placeholders("SELECT 1"), "SELECT 1");
        // Multi-byte characters before a placeholder count as one column each.
        assert_eq!(
            number_placeholders("SELECT 'Chloé' = ?"),
            "SELECT 'Chloé' = $1"
        );
    }
}
