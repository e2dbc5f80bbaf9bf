//! The server's integration suite: the real server on port 0, a fresh database per test, and a
//! WebSocket client speaking the protocol of `DESIGN.md` section 4.
//!
//! Every scenario in `scenarios/` runs once per database backend, so `cargo test` lists
//! `sqlite::…`, `mysql::…` and `postgres::…` (filter with e.g. `cargo test -p chat-server --test
//! api sqlite::`). MariaDB and PostgreSQL are reached at `CHAT_TEST_MYSQL_URL` /
//! `CHAT_TEST_POSTGRES_URL` (defaults: root@127.0.0.1:3306, postgres@127.0.0.1:5432);
//! `./scripts/test.sh` starts them when they are not running.

#[allow(dead_code)] // each test crate uses a part of the harness
mod common;
mod scenarios;

/// Instantiates each scenario `async fn(&TestApp)` as one test per backend:
/// `{sqlite,mysql,postgres}::{module}::{scenario}`. Each test starts its own server on its own
/// database, and stops both at the end (also when the scenario panics).
macro_rules! backend_suite {
    ($($module:ident: [$($scenario:ident),* $(,)?]),* $(,)?) => {
        backend_suite!(@backend sqlite, Sqlite, $($module: [$($scenario),*]),*);
        backend_suite!(@backend mysql, Mysql, $($module: [$($scenario),*]),*);
        backend_suite!(@backend postgres, Postgres, $($module: [$($scenario),*]),*);
    };
    (@backend $backend_mod:ident, $backend:ident, $($module:ident: [$($scenario:ident),*]),*) => {
        mod $backend_mod {
            $(
                mod $module {
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $scenario() {
                            let app =
                                crate::common::spawn_app(crate::common::Backend::$backend).await;
                            crate::scenarios::$module::$scenario(&app).await;
                            app.stop().await;
                        }
                    )*
                }
            )*
        }
    };
}

backend_suite! {
    auth: [
        registering_returns_a_new_id_and_a_taken_name_gets_errno_2,
        names_and_passwords_outside_their_limits_get_400,
        names_are_case_and_space_sensitive,
        logging_in_works_by_id_and_by_name_and_twice_gets_409,
        wrong_passwords_and_unknown_users_get_errno_1,
        logging_out_leaves_the_connection_open_and_unauthenticated,
        every_request_before_login_gets_401_before_its_fields_are_checked,
        unknown_and_server_only_msgids_get_ack_400_logged_in_or_not,
    ],
    friends: [
        adding_a_friend_is_symmetric_and_shows_online_state,
        befriending_oneself_an_unknown_user_or_a_friend_again_is_refused,
        deleting_a_friend_removes_it_on_both_sides,
    ],
    chat: [
        a_one_to_one_message_is_acked_and_pushed_with_every_field,
        message_length_is_counted_in_code_points_and_bad_chats_store_nothing,
        offline_messages_arrive_at_login_in_order_and_not_again_once_read,
        read_cursors_clamp_only_move_forward_and_reject_negative_seqs,
        offline_messages_are_capped_at_the_newest_200_per_conversation,
    ],
    groups: [
        creating_and_joining_a_group_assigns_roles,
        group_chat_reaches_every_member_connection_but_the_sending_one,
        non_members_get_403_and_unknown_groups_404,
        pipelined_group_sends_are_each_answered_for_their_own_sender,
        quitting_hands_the_creator_role_on_and_the_last_member_deletes_the_group,
        a_new_member_gets_only_group_messages_sent_after_joining,
        group_names_are_case_and_space_sensitive,
    ],
    history: [
        history_pages_by_seq_in_ascending_order,
        history_returns_fifty_messages_by_default,
        history_limits_and_bounds_are_validated,
    ],
    sessions: [
        a_users_other_devices_get_its_messages_but_the_sending_one_only_the_ack,
        the_state_column_records_the_last_presence_transition,
        presence_is_pushed_on_the_first_login_and_the_last_logout_only,
        presence_is_announced_once_when_two_devices_come_and_go_at_once,
        a_connection_gets_no_pushes_for_a_user_it_logged_out,
        a_resend_with_the_same_txnid_returns_the_first_ack_and_stores_nothing,
        a_client_supplied_id_never_makes_the_server_act_as_another_user,
        sql_looking_strings_are_stored_verbatim,
    ],
    robustness: [
        malformed_frames_get_error_400_and_the_connection_keeps_working,
        mistyped_fields_get_400_in_the_reply_type_of_the_request,
        a_frame_over_64_kib_gets_413_and_the_connection_stays_open,
        fragmented_messages_are_reassembled_and_limited_as_a_whole,
        a_frame_over_1_mib_closes_with_1009_and_the_server_keeps_serving,
        ten_thousand_pipelined_chats_get_every_reply_in_order_and_every_push,
    ],
    races: [
        concurrent_registrations_of_one_name_create_exactly_one_user,
        concurrent_creations_of_one_group_name_create_exactly_one_group,
        concurrent_mutual_friend_requests_make_one_friendship_and_one_409,
        concurrent_joins_of_one_user_make_one_membership_and_one_409,
        concurrent_senders_get_unique_contiguous_seqs,
    ],
    lifecycle: [
        shutting_down_closes_every_socket_with_1001,
        a_restarted_server_keeps_every_acked_message_and_continues_the_seqs,
    ],
    http: [
        healthz_answers_200,
        metrics_expose_connection_and_frame_counters_as_prometheus_text,
    ],
}

/// MariaDB sessions run READ COMMITTED (PostgreSQL's default): under InnoDB's REPEATABLE READ
/// the seq reservation of a batch, planned as a full index scan on a small table, kept every
/// conversation row locked until COMMIT and two replicas wrote one after the other.
#[tokio::test]
async fn mariadb_sessions_run_read_committed() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    let db = common::TestDb::create(common::Backend::Mysql).await;
    let store = chat_server::store::Store::connect(db.url(), 2, Default::default())
        .await
        .expect("the store connects and migrates");
    let row = store
        .connection()
        .query_one_raw(Statement::from_string(
            DbBackend::MySql,
            "SELECT @@SESSION.tx_isolation",
        ))
        .await
        .expect("the isolation level")
        .expect("one row");
    let level: String = row.try_get_by_index(0).expect("a string");
    assert_eq!(level, "READ-COMMITTED");
    store.close().await;
    db.destroy().await;
}
