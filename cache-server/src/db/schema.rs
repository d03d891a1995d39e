// The tables of migrations/*/*/up.sql.

diesel::table! {
    narinfos (hash) {
        hash -> Text,
        store_path -> Text,
        nar_file -> Text,
        upstream_nar_url -> Text,
        narinfo -> Text,
        nar_size -> BigInt,
        file_size -> Nullable<BigInt>,
        created_at -> BigInt,
        last_accessed_at -> BigInt,
    }
}

diesel::table! {
    nars (file) {
        file -> Text,
        size -> BigInt,
        created_at -> BigInt,
        last_accessed_at -> BigInt,
    }
}

diesel::table! {
    tasks (id) {
        id -> Text,
        kind -> Text,
        state -> Text,
        request -> Text,
        progress -> Nullable<Text>,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        owner -> Nullable<Text>,
        attempts -> Integer,
        created_at -> BigInt,
        started_at -> Nullable<BigInt>,
        heartbeat_at -> Nullable<BigInt>,
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    pins (store_path) {
        store_path -> Text,
        created_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(narinfos, nars, tasks, pins);
