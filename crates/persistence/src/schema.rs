//! Diesel's view of the tables created by `migrations/sqlite`; kept in step with them by hand
//! (the tests run every query against freshly migrated databases).

diesel::table! {
    processes (id) {
        id -> BigInt,
        tenant -> Text,
        async_process_id -> Text,
        reference_id -> Text,
        name -> Text,
        status -> Text,
        message -> Text,
        current_step -> Integer,
        total_steps -> Integer,
        item_count -> BigInt,
        additional_data -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        runnable -> Bool,
        end_reason -> Nullable<Text>,
        idempotency_key -> Nullable<Text>,
        version -> BigInt,
        callback_url -> Nullable<Text>,
        open_for_parts -> Bool,
        start_at -> Nullable<BigInt>,
        priority -> Integer,
    }
}

diesel::table! {
    steps (process_id, step_number) {
        process_id -> BigInt,
        step_number -> Integer,
        name -> Text,
        status -> Text,
        message -> Text,
        entered -> BigInt,
        succeeded -> BigInt,
        failed -> BigInt,
        handler -> Text,
        chunk_size -> Integer,
        max_attempts -> Integer,
        timeout_secs -> BigInt,
        on_item_failure -> Text,
        started -> Bool,
        next_seq -> BigInt,
        tolerated_failure_count -> Nullable<BigInt>,
        tolerated_failure_hundredths -> Nullable<Integer>,
        max_in_flight -> Nullable<Integer>,
    }
}

diesel::table! {
    items (process_id, item_index) {
        process_id -> BigInt,
        item_index -> BigInt,
        value -> Text,
    }
}

diesel::table! {
    failure_groups (id) {
        id -> BigInt,
        process_id -> BigInt,
        step_number -> Integer,
        code -> BigInt,
        status_message -> Text,
    }
}

diesel::table! {
    outcomes (process_id, step_number, item_index) {
        process_id -> BigInt,
        step_number -> Integer,
        item_index -> BigInt,
        seq -> BigInt,
        failure_group -> Nullable<BigInt>,
    }
}

diesel::table! {
    tasks (id) {
        id -> BigInt,
        process_id -> BigInt,
        step_number -> Integer,
        queue -> Text,
        item_indices -> Text,
        state -> Text,
        attempt -> Integer,
        max_attempts -> Integer,
        timeout_secs -> BigInt,
        lease_token -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        worker_id -> Nullable<Text>,
        available_at -> BigInt,
        last_error -> Nullable<Text>,
        heartbeat_at -> Nullable<BigInt>,
        priority -> Integer,
        ordinal -> BigInt,
    }
}

diesel::table! {
    deliveries (id) {
        id -> BigInt,
        process_id -> BigInt,
        delivery_id -> Text,
        url -> Text,
        finished_status -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        body -> Nullable<Text>,
        last_status_code -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        delivered_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    parts (process_id, part_number) {
        process_id -> BigInt,
        part_number -> Integer,
        item_count -> BigInt,
        byte_count -> BigInt,
        received_at -> BigInt,
    }
}

diesel::table! {
    part_items (process_id, part_number, position) {
        process_id -> BigInt,
        part_number -> Integer,
        position -> BigInt,
        value -> Text,
    }
}

diesel::joinable!(deliveries -> processes (process_id));
diesel::joinable!(tasks -> processes (process_id));
diesel::joinable!(failure_groups -> processes (process_id));

diesel::allow_tables_to_appear_in_same_query!(
    processes,
    steps,
    items,
    failure_groups,
    outcomes,
    tasks,
    deliveries,
    parts,
    part_items
);
