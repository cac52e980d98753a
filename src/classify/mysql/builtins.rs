//! MySQL's and MariaDB's built-in functions, as replication sees them. A name not listed
//! here is a stored function: looked up in the catalog, else `unknown`.

use crate::classify::functions::Builtin;

/// The built-in `name` (lower case) called with `nargs` arguments.
pub(in crate::classify) fn builtin(name: &str, nargs: usize) -> Option<Builtin> {
    use Builtin::*;
    Some(match name {
        // Without an argument they read the clock or the session; with one they compute.
        "unix_timestamp" | "last_insert_id" if nargs > 0 => Pure,
        "now" | "current_timestamp" | "current_date" | "current_time" | "curdate" | "curtime" | "localtime" | "localtimestamp"
        | "sysdate" | "utc_date" | "utc_time" | "utc_timestamp" | "unix_timestamp" | "rand" | "uuid" | "uuid_short" | "sys_guid"
        | "random_bytes" | "connection_id" | "current_user" | "user" | "session_user" | "system_user" | "current_role"
        | "last_insert_id" | "found_rows" | "row_count" | "load_file" | "encrypt" | "ps_current_thread_id" => Nondeterministic,
        "sleep" | "benchmark" | "get_lock" | "release_lock" | "release_all_locks" | "is_free_lock" | "is_used_lock"
        | "master_pos_wait" | "source_pos_wait" | "master_gtid_wait" | "wait_for_executed_gtid_set"
        | "wait_until_sql_thread_after_gtids" => Harmless,
        // MariaDB sequences: NEXTVAL(seq), SETVAL(seq, n), LASTVAL(seq).
        "nextval" | "setval" => SequenceWrite,
        "lastval" => SequenceRead,
        // Aggregates and window functions.
        "count" | "sum" | "avg" | "min" | "max" | "group_concat" | "json_arrayagg" | "json_objectagg" | "bit_and" | "bit_or"
        | "bit_xor" | "std" | "stddev" | "stddev_pop" | "stddev_samp" | "variance" | "var_pop" | "var_samp" | "any_value"
        | "row_number" | "rank" | "dense_rank" | "percent_rank" | "cume_dist" | "ntile" | "lag" | "lead" | "first_value"
        | "last_value" | "nth_value" | "median" | "percentile_cont" | "percentile_disc"
        // Control flow, comparison, casts.
        | "if" | "ifnull" | "nullif" | "coalesce" | "isnull" | "greatest" | "least" | "interval" | "strcmp" | "cast"
        | "convert" | "binary" | "charset" | "collation" | "coercibility" | "default" | "values" | "value" | "row" | "exists"
        | "any" | "all" | "name_const" | "nvl" | "nvl2" | "decode_oracle"
        // Strings.
        | "ascii" | "bin" | "bit_length" | "char" | "char_length" | "character_length" | "concat" | "concat_ws" | "elt"
        | "export_set" | "field" | "find_in_set" | "format" | "from_base64" | "hex" | "insert" | "instr" | "lcase" | "left"
        | "length" | "locate" | "lower" | "lpad" | "ltrim" | "make_set" | "mid" | "oct" | "octet_length" | "ord" | "position"
        | "quote" | "regexp_instr" | "regexp_like" | "regexp_replace" | "regexp_substr" | "repeat" | "replace" | "reverse"
        | "right" | "rpad" | "rtrim" | "soundex" | "space" | "substr" | "substring" | "substring_index" | "to_base64" | "trim"
        | "ucase" | "unhex" | "upper" | "weight_string" | "match" | "against" | "char_length_utf8" | "format_bytes"
        | "format_pico_time" | "sformat" | "natural_sort_key" | "to_char"
        // Numbers.
        | "abs" | "acos" | "asin" | "atan" | "atan2" | "ceil" | "ceiling" | "conv" | "cos" | "cot" | "crc32" | "degrees"
        | "div" | "exp" | "floor" | "ln" | "log" | "log10" | "log2" | "mod" | "pi" | "pow" | "power" | "radians" | "round"
        | "sign" | "sin" | "sqrt" | "tan" | "truncate" | "bit_count"
        // Dates and times (of their arguments).
        | "adddate" | "addtime" | "convert_tz" | "date" | "date_add" | "date_format" | "date_sub" | "datediff" | "day"
        | "dayname" | "dayofmonth" | "dayofweek" | "dayofyear" | "extract" | "from_days" | "from_unixtime" | "get_format"
        | "hour" | "last_day" | "makedate" | "maketime" | "microsecond" | "minute" | "month" | "monthname" | "period_add"
        | "period_diff" | "quarter" | "sec_to_time" | "second" | "str_to_date" | "subdate" | "subtime" | "time"
        | "time_format" | "time_to_sec" | "timediff" | "timestamp" | "timestampadd" | "timestampdiff" | "to_days"
        | "to_seconds" | "week" | "weekday" | "weekofyear" | "year" | "yearweek" | "add_months" | "months_between"
        // JSON.
        | "json_array" | "json_array_append" | "json_array_insert" | "json_contains" | "json_contains_path" | "json_depth"
        | "json_extract" | "json_insert" | "json_keys" | "json_length" | "json_merge" | "json_merge_patch"
        | "json_merge_preserve" | "json_object" | "json_overlaps" | "json_pretty" | "json_quote" | "json_remove"
        | "json_replace" | "json_schema_valid" | "json_schema_validation_report" | "json_search" | "json_set"
        | "json_storage_free" | "json_storage_size" | "json_table" | "json_type" | "json_unquote" | "json_valid"
        | "json_value" | "json_query" | "json_exists" | "json_detailed" | "json_loose" | "json_compact" | "json_normalize"
        | "json_equals" | "json_array_intersect" | "json_object_filter_keys" | "json_object_to_array" | "member"
        // Hashes, encryption with given keys, compression, network and UUID conversions.
        | "md5" | "sha" | "sha1" | "sha2" | "aes_encrypt" | "aes_decrypt" | "compress" | "uncompress"
        | "uncompressed_length" | "password" | "old_password" | "kdf" | "inet_aton" | "inet_ntoa" | "inet6_aton"
        | "inet6_ntoa" | "is_ipv4" | "is_ipv4_compat" | "is_ipv4_mapped" | "is_ipv6" | "is_uuid" | "uuid_to_bin"
        | "bin_to_uuid" | "statement_digest" | "statement_digest_text" | "gtid_subset" | "gtid_subtract"
        // What the server is: the same answer for every statement of a session.
        | "database" | "schema" | "version" | "icu_version" | "extractvalue" | "updatexml"
        // Spatial.
        | "point" | "linestring" | "polygon" | "st_distance" | "st_distance_sphere" | "st_contains" | "st_within"
        | "st_intersects" | "st_geomfromtext" | "st_astext" | "st_x" | "st_y" | "st_srid" | "st_buffer" | "st_area"
        | "st_length" | "st_geomfromgeojson" | "st_asgeojson" | "st_pointfromtext" | "mbrcontains" | "mbrwithin" => Pure,
        _ => return None,
    })
}
