//! The static answers of Flight SQL's metadata commands: `GetSqlInfo` (what DBeaver's JDBC
//! driver builds its `DatabaseMetaData` from), `GetXdbcTypeInfo`, and the key commands, which
//! are empty because Vigie's tables have no primary or foreign keys.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlOuterJoinsSupportLevel,
    SqlSupportedCaseSensitivity, SqlSupportedGroupBy, SqlSupportedResultSetType,
    SqlSupportedSubqueries, SqlSupportedUnions, SqlTransactionIsolationLevel, SupportedSqlGrammar,
    XdbcDataType, XdbcDatetimeSubcode,
};
use datafusion::execution::SessionState;
use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;

/// A bitmask with the bits of `values` set (Flight SQL's encoding of "supported" lists).
fn bits(values: &[i32]) -> i32 {
    values.iter().fold(0, |mask, v| mask | (1 << v))
}

/// The function names of `state` in the four lists JDBC's `DatabaseMetaData` asks for, by
/// DataFusion's own documentation sections: (numeric, string, date/time, system).
fn function_lists(state: &SessionState) -> [Vec<String>; 4] {
    let mut lists: [BTreeSet<String>; 4] = Default::default();
    for (name, udf) in state.scalar_functions() {
        let label = udf.documentation().map_or("", |d| d.doc_section.label);
        let list = match label {
            "Math Functions" => 0,
            "String Functions" | "Binary String Functions" | "Regular Expression Functions" => 1,
            "Time and Date Functions" => 2,
            _ => 3,
        };
        lists[list].insert(name.to_uppercase());
    }
    for name in state.aggregate_functions().keys() {
        lists[3].insert(name.to_uppercase());
    }
    lists.map(|set| set.into_iter().collect())
}

/// Everything `GetSqlInfo` answers, computed once from the session's functions and the query
/// time limit.
pub(crate) fn sql_info(
    state: &SessionState,
    statement_timeout: std::time::Duration,
) -> Result<SqlInfoData, FlightError> {
    let mut info = SqlInfoDataBuilder::new();
    // Server.
    info.append(SqlInfo::FlightSqlServerName, "Vigie");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    info.append(SqlInfo::FlightSqlServerArrowVersion, arrow::ARROW_VERSION);
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    info.append(SqlInfo::FlightSqlServerCancel, false);
    info.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    info.append(SqlInfo::FlightSqlServerIngestTransactionsSupported, false);
    // Milliseconds; 0 would mean none, and every statement has one (--query-timeout).
    let timeout_ms = i32::try_from(statement_timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    info.append(SqlInfo::FlightSqlServerStatementTimeout, timeout_ms);
    info.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    // SQL dialect (DataFusion's).
    info.append(SqlInfo::SqlDdlCatalog, false);
    info.append(SqlInfo::SqlDdlSchema, false);
    info.append(SqlInfo::SqlDdlTable, false);
    info.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    info.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    info.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // DataFusion sorts NULLs as the largest value: last ascending, first descending.
    info.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    info.append(
        SqlInfo::SqlKeywords,
        ALL_KEYWORDS
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
    );
    let [numeric, string, datetime, system] = function_lists(state);
    info.append(SqlInfo::SqlNumericFunctions, numeric);
    info.append(SqlInfo::SqlStringFunctions, string);
    info.append(SqlInfo::SqlDatetimeFunctions, datetime);
    info.append(SqlInfo::SqlSystemFunctions, system);
    info.append(SqlInfo::SqlSearchStringEscape, "\\");
    info.append(SqlInfo::SqlExtraNameCharacters, "");
    info.append(SqlInfo::SqlSupportsColumnAliasing, true);
    info.append(SqlInfo::SqlNullPlusNullIsNull, true);
    info.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    info.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    info.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    info.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    info.append(
        SqlInfo::SqlSupportedGroupBy,
        bits(&[
            SqlSupportedGroupBy::SqlGroupByUnrelated as i32,
            SqlSupportedGroupBy::SqlGroupByBeyondSelect as i32,
        ]),
    );
    info.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    info.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    info.append(
        SqlInfo::SqlSupportedGrammar,
        bits(&[
            SupportedSqlGrammar::SqlMinimumGrammar as i32,
            SupportedSqlGrammar::SqlCoreGrammar as i32,
        ]),
    );
    info.append(
        SqlInfo::SqlAnsi92SupportedLevel,
        // ANSI92_ENTRY_SQL = 0 (the enum is not re-exported by arrow-flight).
        bits(&[0]),
    );
    info.append(SqlInfo::SqlSupportsIntegrityEnhancementFacility, false);
    info.append(
        SqlInfo::SqlOuterJoinsSupportLevel,
        SqlOuterJoinsSupportLevel::SqlFullOuterJoins as i32,
    );
    info.append(SqlInfo::SqlSchemaTerm, "schema");
    info.append(SqlInfo::SqlProcedureTerm, "procedure");
    info.append(SqlInfo::SqlCatalogTerm, "catalog");
    info.append(SqlInfo::SqlCatalogAtStart, true);
    info.append(SqlInfo::SqlSchemasSupportedActions, 0i32);
    info.append(SqlInfo::SqlCatalogsSupportedActions, 0i32);
    info.append(SqlInfo::SqlSupportedPositionedCommands, 0i32);
    info.append(SqlInfo::SqlSelectForUpdateSupported, false);
    info.append(SqlInfo::SqlStoredProceduresSupported, false);
    info.append(
        SqlInfo::SqlSupportedSubqueries,
        bits(&[
            SqlSupportedSubqueries::SqlSubqueriesInComparisons as i32,
            SqlSupportedSubqueries::SqlSubqueriesInExists as i32,
            SqlSupportedSubqueries::SqlSubqueriesInIns as i32,
        ]),
    );
    info.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    info.append(
        SqlInfo::SqlSupportedUnions,
        bits(&[
            SqlSupportedUnions::SqlUnion as i32,
            SqlSupportedUnions::SqlUnionAll as i32,
        ]),
    );
    // No fixed limits (0 = none or unknown, as JDBC defines it).
    for limit in [
        SqlInfo::SqlMaxBinaryLiteralLength,
        SqlInfo::SqlMaxCharLiteralLength,
        SqlInfo::SqlMaxColumnNameLength,
        SqlInfo::SqlMaxColumnsInGroupBy,
        SqlInfo::SqlMaxColumnsInIndex,
        SqlInfo::SqlMaxColumnsInOrderBy,
        SqlInfo::SqlMaxColumnsInSelect,
        SqlInfo::SqlMaxColumnsInTable,
        SqlInfo::SqlMaxConnections,
        SqlInfo::SqlMaxCursorNameLength,
        SqlInfo::SqlMaxIndexLength,
        SqlInfo::SqlDbSchemaNameLength,
        SqlInfo::SqlMaxProcedureNameLength,
        SqlInfo::SqlMaxCatalogNameLength,
        SqlInfo::SqlMaxRowSize,
        SqlInfo::SqlMaxStatementLength,
        SqlInfo::SqlMaxStatements,
        SqlInfo::SqlMaxTableNameLength,
        SqlInfo::SqlMaxTablesInSelect,
        SqlInfo::SqlMaxUsernameLength,
    ] {
        info.append(limit, 0i64);
    }
    info.append(SqlInfo::SqlMaxRowSizeIncludesBlobs, true);
    // Read-only, no transactions.
    info.append(
        SqlInfo::SqlDefaultTransactionIsolation,
        SqlTransactionIsolationLevel::SqlTransactionNone as i32,
    );
    info.append(SqlInfo::SqlTransactionsSupported, false);
    info.append(
        SqlInfo::SqlSupportedTransactionsIsolationLevels,
        bits(&[SqlTransactionIsolationLevel::SqlTransactionNone as i32]),
    );
    info.append(SqlInfo::SqlDataDefinitionCausesTransactionCommit, false);
    info.append(SqlInfo::SqlDataDefinitionsInTransactionsIgnored, true);
    info.append(
        SqlInfo::SqlSupportedResultSetTypes,
        bits(&[SqlSupportedResultSetType::SqlResultSetTypeForwardOnly as i32]),
    );
    info.append(SqlInfo::SqlBatchUpdatesSupported, false);
    info.append(SqlInfo::SqlSavepointsSupported, false);
    info.append(SqlInfo::SqlNamedParametersSupported, false);
    info.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    info.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    info.build()
}

/// One row of `GetXdbcTypeInfo`.
fn xdbc(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    quoted: bool,
    subcode: Option<XdbcDatetimeSubcode>,
) -> XdbcTypeInfo {
    let numeric = matches!(
        data_type,
        XdbcDataType::XdbcTinyint
            | XdbcDataType::XdbcSmallint
            | XdbcDataType::XdbcInteger
            | XdbcDataType::XdbcBigint
            | XdbcDataType::XdbcFloat
            | XdbcDataType::XdbcReal
            | XdbcDataType::XdbcDouble
            | XdbcDataType::XdbcDecimal
    );
    let sql_data_type = match data_type {
        XdbcDataType::XdbcDate | XdbcDataType::XdbcTime | XdbcDataType::XdbcTimestamp => {
            XdbcDataType::XdbcDatetime
        }
        other => other,
    };
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size,
        literal_prefix: quoted.then(|| "'".to_string()),
        literal_suffix: quoted.then(|| "'".to_string()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: quoted,
        searchable: Searchable::Full,
        unsigned_attribute: numeric.then_some(false),
        fixed_prec_scale: data_type == XdbcDataType::XdbcDecimal,
        auto_increment: numeric.then_some(false),
        local_type_name: Some(name.to_string()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type,
        datetime_subcode: subcode,
        num_prec_radix: numeric.then_some(10),
        interval_precision: None,
    }
}

/// The SQL types Vigie's tables and DataFusion's SQL use, for `GetXdbcTypeInfo`.
pub(crate) fn xdbc_type_info() -> Result<XdbcTypeInfoData, FlightError> {
    use XdbcDataType as T;
    let mut builder = XdbcTypeInfoDataBuilder::new();
    for info in [
        xdbc("BOOLEAN", T::XdbcBit, Some(1), false, None),
        xdbc("TINYINT", T::XdbcTinyint, Some(3), false, None),
        xdbc("SMALLINT", T::XdbcSmallint, Some(5), false, None),
        xdbc("INTEGER", T::XdbcInteger, Some(10), false, None),
        xdbc("BIGINT", T::XdbcBigint, Some(19), false, None),
        xdbc("REAL", T::XdbcReal, Some(7), false, None),
        xdbc("DOUBLE", T::XdbcDouble, Some(15), false, None),
        xdbc("DECIMAL", T::XdbcDecimal, Some(38), false, None),
        xdbc("VARCHAR", T::XdbcVarchar, None, true, None),
        xdbc("BINARY", T::XdbcBinary, None, true, None),
        xdbc("DATE", T::XdbcDate, Some(10), true, None),
        xdbc("TIME", T::XdbcTime, Some(15), true, None),
        xdbc(
            "TIMESTAMP",
            T::XdbcTimestamp,
            Some(26),
            true,
            Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
        ),
    ] {
        builder.append(info);
    }
    builder.build()
}

/// The (always empty) answer of `GetPrimaryKeys`, with the schema the Flight SQL spec gives.
pub(crate) fn primary_keys() -> RecordBatch {
    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    RecordBatch::new_empty(Arc::new(Schema::new(vec![
        utf8("catalog_name", true),
        utf8("db_schema_name", true),
        utf8("table_name", false),
        utf8("column_name", false),
        utf8("key_name", true),
        Field::new("key_sequence", DataType::Int32, false),
    ])))
}

/// The (always empty) answer of `GetExportedKeys`, `GetImportedKeys` and `GetCrossReference`.
pub(crate) fn foreign_keys() -> RecordBatch {
    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    RecordBatch::new_empty(Arc::new(Schema::new(vec![
        utf8("pk_catalog_name", true),
        utf8("pk_db_schema_name", true),
        utf8("pk_table_name", false),
        utf8("pk_column_name", false),
        utf8("fk_catalog_name", true),
        utf8("fk_db_schema_name", true),
        utf8("fk_table_name", false),
        utf8("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        utf8("fk_key_name", true),
        utf8("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ])))
}
