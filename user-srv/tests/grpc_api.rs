//! The gRPC API end to end: user-srv in-process on port 0, a fresh database per test, called
//! through the generated client. Every case runs on SQLite and on PostgreSQL.

mod support;

use std::time::Duration;

use proto::user_v1::{
    CreateUserInfo, IdRequest, MobileRequest, PageInfo, UpdateUserInfo, UserInfoResponse,
    VerifyPasswordRequest,
};
use sqlx::Executor;
use support::{Backend, TestApp, eventually, spawn_app};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use tonic_types::StatusExt;
use user_srv::seed::{self, SeedRequest};

const DEADLINE: Duration = Duration::from_secs(10);

/// Generates one test per case and backend; a PostgreSQL case without a server is skipped
/// with a message (and fails in CI, see `support::TestDb::create`).
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let app = crate::spawn_app(crate::Backend::Sqlite).await.expect("sqlite");
                    crate::$case(app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(app) = crate::spawn_app(crate::Backend::Postgres).await else {
                        return;
                    };
                    crate::$case(app).await;
                }
            )*
        }
    };
}

cases!(
    create_then_read_back,
    bad_create_input_is_invalid_argument_and_stores_nothing,
    duplicate_mobile_is_already_exists_and_keeps_the_first,
    concurrent_creates_of_one_mobile_yield_exactly_one_user,
    missing_users_are_not_found_and_bad_keys_invalid,
    paging_normalises_and_orders_by_id,
    the_total_follows_every_committed_change,
    update_changes_only_the_given_fields,
    bad_updates_are_rejected_and_change_nothing,
    verify_password_answers_unknown_and_wrong_alike_without_the_hash,
    an_old_hash_is_remade_with_todays_parameters_on_login,
    the_admin_port_metrics_move_with_the_calls,
    seeding_twice_changes_nothing,
    health_turns_not_serving_and_watch_ends_on_shutdown,
    reflection_lists_the_user_service,
    an_in_flight_call_completes_across_shutdown,
);

fn create(mobile: &str, password: &str, nick_name: &str) -> CreateUserInfo {
    CreateUserInfo {
        mobile: mobile.into(),
        password: password.into(),
        nick_name: nick_name.into(),
    }
}

async fn total(app: &TestApp) -> i64 {
    app.client
        .clone()
        .get_user_list(PageInfo { pn: 1, p_size: 1 })
        .await
        .expect("list")
        .into_inner()
        .total
}

async fn by_id(app: &TestApp, id: i64) -> UserInfoResponse {
    app.client
        .clone()
        .get_user_by_id(IdRequest { id })
        .await
        .expect("get by id")
        .into_inner()
}

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with(field), "{status:?}");
    let violations = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, field);
}

async fn create_then_read_back(app: TestApp) {
    let mut c = app.client.clone();
    let created = c
        .create_user(create("13800138000", "s3cret-pass", ""))
        .await
        .expect("create")
        .into_inner();
    assert!(created.id > 0);
    assert_eq!(
        created.nick_name, "13800138000",
        "nick name defaults to the mobile"
    );
    assert_eq!(created.role, 1);

    let got = by_id(&app, created.id).await;
    assert_eq!((got.id, got.mobile.as_str()), (created.id, "13800138000"));
    assert_eq!((got.gender.as_str(), got.birthday), ("male", 0));
    let by_mobile = c
        .get_user_by_mobile(MobileRequest {
            mobile: "13800138000".into(),
        })
        .await
        .expect("by mobile")
        .into_inner();
    assert_eq!(by_mobile, got);
    // Stored as argon2id; no answer has a field that could carry it.
    let hash = stored_hash(&app, "13800138000").await;
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

/// The PHC string stored for `mobile`, read from the database: no call returns it.
async fn stored_hash(app: &TestApp, mobile: &str) -> String {
    let mut sql = app.db.connect().await;
    let row = sqlx::query(&format!(
        "SELECT password FROM users WHERE mobile = '{mobile}'"
    ))
    .fetch_one(&mut sql)
    .await
    .expect("the user's row");
    sqlx::Row::get(&row, "password")
}

async fn bad_create_input_is_invalid_argument_and_stores_nothing(app: TestApp) {
    let mut c = app.client.clone();
    let table = [
        (create("", "s3cret-pass", ""), "mobile"),
        (create("23800138000", "s3cret-pass", ""), "mobile"),
        (create("1380013800", "s3cret-pass", ""), "mobile"),
        (create("138001380001", "s3cret-pass", ""), "mobile"),
        (create("1380013800x", "s3cret-pass", ""), "mobile"),
        (create("13800138000", "", ""), "password"),
        (create("13800138000", "12345", ""), "password"),
        (create("13800138000", &"p".repeat(65), ""), "password"),
        (create("13800138000", "s3cret-pass", "   "), "nick_name"),
        (
            create("13800138000", "s3cret-pass", &"n".repeat(33)),
            "nick_name",
        ),
    ];
    for (request, field) in table {
        let status = c.create_user(request.clone()).await.expect_err("rejected");
        assert_invalid(&status, field);
    }
    assert_eq!(total(&app).await, 0, "no rejected request stored a row");
}

async fn duplicate_mobile_is_already_exists_and_keeps_the_first(app: TestApp) {
    let mut c = app.client.clone();
    let first = c
        .create_user(create("13800138000", "first-pass", "first"))
        .await
        .expect("first create")
        .into_inner();
    let status = c
        .create_user(create("13800138000", "second-pass", "second"))
        .await
        .expect_err("duplicate");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("mobile"), "{status:?}");

    let kept = by_id(&app, first.id).await;
    assert_eq!(kept.nick_name, "first");
    let user = c
        .verify_password(VerifyPasswordRequest {
            mobile: "13800138000".into(),
            password: "first-pass".into(),
        })
        .await
        .expect("the first user's password still works")
        .into_inner();
    assert_eq!(user.id, first.id);
    assert_eq!(total(&app).await, 1);
}

async fn concurrent_creates_of_one_mobile_yield_exactly_one_user(app: TestApp) {
    let calls = (0..6).map(|i| {
        let mut c = app.client.clone();
        async move {
            c.create_user(create("13900139000", "s3cret-pass", &format!("racer{i}")))
                .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::AlreadyExists))
        .count();
    assert_eq!((created, refused), (1, 5), "{results:?}");
    assert_eq!(total(&app).await, 1);
}

async fn missing_users_are_not_found_and_bad_keys_invalid(app: TestApp) {
    let mut c = app.client.clone();
    let status = c
        .get_user_by_id(IdRequest { id: 4242 })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = c
        .get_user_by_mobile(MobileRequest {
            mobile: "13912345678".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    for id in [0, -7] {
        let status = c
            .get_user_by_id(IdRequest { id })
            .await
            .expect_err("bad id");
        assert_invalid(&status, "id");
    }
    let status = c
        .get_user_by_mobile(MobileRequest {
            mobile: "not-a-phone".into(),
        })
        .await
        .expect_err("bad mobile");
    assert_invalid(&status, "mobile");
}

async fn seed_users(app: &TestApp, users: u32) {
    seed::seed(
        &app.app_db,
        &SeedRequest {
            users,
            admin_mobile: "18800000000".into(),
            admin_password: "admin-pass".into(),
        },
    )
    .await
    .expect("seed");
}

async fn paging_normalises_and_orders_by_id(app: TestApp) {
    seed_users(&app, 120).await; // 121 rows with the admin
    let c = app.client.clone();
    let page = |pn, p_size| {
        let mut c = c.clone();
        async move {
            c.get_user_list(PageInfo { pn, p_size })
                .await
                .expect("list")
                .into_inner()
        }
    };
    let first = page(0, 0).await;
    assert_eq!(first.total, 121);
    assert_eq!(first.data.len(), 10, "size 0 means 10");
    assert_eq!(first.data, page(1, 10).await.data, "page 0 means page 1");
    assert!(
        first.data.windows(2).all(|w| w[0].id < w[1].id),
        "ordered by id"
    );

    assert_eq!(page(1, 101).await.data.len(), 100, "size capped at 100");
    assert_eq!(
        page(1, u32::MAX).await.data.len(),
        100,
        "huge size capped at 100"
    );
    assert_eq!(page(2, 100).await.data.len(), 21, "the last partial page");

    let third = page(3, 10).await;
    let all = page(1, 100).await;
    assert_eq!(
        third.data,
        all.data[20..30].to_vec(),
        "pn 3 of size 10 is rows 21..30"
    );

    let past = page(50, 10).await;
    assert_eq!(
        (past.total, past.data.len()),
        (121, 0),
        "a page past the end is empty"
    );
    let far = page(u32::MAX, u32::MAX).await;
    assert_eq!((far.total, far.data.len()), (121, 0));
}

/// The total is kept by triggers, not counted per call: it must follow creates, soft and hard
/// deletes, undeletes and a rolled-back insert, whoever makes them (here a second connection
/// running plain SQL, as an operator or another service would).
async fn the_total_follows_every_committed_change(app: TestApp) {
    seed_users(&app, 5).await; // 6 with the admin
    assert_eq!(total(&app).await, 6);
    let mut c = app.client.clone();
    c.create_user(create("13800138000", "s3cret-pass", ""))
        .await
        .expect("create");
    assert_eq!(total(&app).await, 7, "a create counts");
    c.create_user(create("13800138000", "s3cret-pass", ""))
        .await
        .expect_err("duplicate");
    assert_eq!(total(&app).await, 7, "a refused create does not");

    let mut sql = app.db.connect().await;
    for (statement, expected, why) in [
        (
            "UPDATE users SET deleted = 1 WHERE id IN (1, 2)",
            5,
            "soft-deleted users leave the total",
        ),
        (
            "UPDATE users SET deleted = 1 WHERE id = 1",
            5,
            "deleting a deleted user changes nothing",
        ),
        (
            "UPDATE users SET deleted = 0 WHERE id = 2",
            6,
            "an undeleted user comes back",
        ),
        (
            "DELETE FROM users WHERE id IN (1, 3)",
            5,
            "a hard delete of a deleted and a live user",
        ),
    ] {
        sql.execute(statement).await.expect(statement);
        assert_eq!(total(&app).await, expected, "{why}: {statement}");
    }
    sql.execute("BEGIN").await.expect("begin");
    sql.execute(
        "INSERT INTO users (mobile, password, nick_name, created_at, updated_at) \
         VALUES ('13900000000', 'x', 'x', 0, 0)",
    )
    .await
    .expect("insert");
    sql.execute("ROLLBACK").await.expect("rollback");
    assert_eq!(total(&app).await, 5, "a rolled-back insert never counted");

    let page = c
        .get_user_list(PageInfo { pn: 1, p_size: 100 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        page.data.len() as i64,
        page.total,
        "the total is the number of live rows"
    );
}

async fn update_changes_only_the_given_fields(app: TestApp) {
    let mut c = app.client.clone();
    let id = c
        .create_user(create("13800138000", "s3cret-pass", "before"))
        .await
        .expect("create")
        .into_inner()
        .id;
    let update =
        |nick_name: Option<&str>, gender: Option<&str>, birthday: Option<u64>| UpdateUserInfo {
            id,
            nick_name: nick_name.map(Into::into),
            gender: gender.map(Into::into),
            birthday,
        };

    c.update_user(update(Some("after"), None, None))
        .await
        .expect("nick");
    let u = by_id(&app, id).await;
    assert_eq!(
        (u.nick_name.as_str(), u.gender.as_str(), u.birthday),
        ("after", "male", 0)
    );

    c.update_user(update(None, Some("female"), Some(646_790_400)))
        .await
        .expect("gender and birthday");
    let u = by_id(&app, id).await;
    assert_eq!(
        (u.nick_name.as_str(), u.gender.as_str(), u.birthday),
        ("after", "female", 646_790_400)
    );

    c.update_user(update(None, None, Some(0)))
        .await
        .expect("clear birthday");
    let u = by_id(&app, id).await;
    assert_eq!((u.gender.as_str(), u.birthday), ("female", 0));

    c.update_user(update(None, None, None))
        .await
        .expect("no-op update");
    assert_eq!(by_id(&app, id).await.nick_name, "after");
}

async fn bad_updates_are_rejected_and_change_nothing(app: TestApp) {
    let mut c = app.client.clone();
    let id = c
        .create_user(create("13800138000", "s3cret-pass", "stable"))
        .await
        .expect("create")
        .into_inner()
        .id;
    let before = by_id(&app, id).await;
    let cases = [
        (
            UpdateUserInfo {
                id,
                gender: Some("other".into()),
                ..Default::default()
            },
            "gender",
        ),
        (
            UpdateUserInfo {
                id,
                nick_name: Some(" ".into()),
                ..Default::default()
            },
            "nick_name",
        ),
        (
            UpdateUserInfo {
                id,
                birthday: Some(u64::MAX),
                ..Default::default()
            },
            "birthday",
        ),
        (
            UpdateUserInfo {
                id: 0,
                nick_name: Some("x".into()),
                ..Default::default()
            },
            "id",
        ),
    ];
    for (request, field) in cases {
        let status = c.update_user(request).await.expect_err("rejected");
        assert_invalid(&status, field);
    }
    assert_eq!(by_id(&app, id).await, before, "nothing changed");

    let status = c
        .update_user(UpdateUserInfo {
            id: id + 1000,
            nick_name: Some("ghost".into()),
            ..Default::default()
        })
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

async fn verify_password_answers_unknown_and_wrong_alike_without_the_hash(app: TestApp) {
    let mut c = app.client.clone();
    let id = c
        .create_user(create("13800138000", "right-pass", "nick"))
        .await
        .expect("create")
        .into_inner()
        .id;
    let verify = |mobile: &str, password: &str| {
        let request = VerifyPasswordRequest {
            mobile: mobile.into(),
            password: password.into(),
        };
        let mut c = c.clone();
        async move { c.verify_password(request).await }
    };
    let user = verify("13800138000", "right-pass")
        .await
        .expect("the right password")
        .into_inner();
    assert_eq!((user.id, user.nick_name.as_str()), (id, "nick"));

    let wrong = verify("13800138000", "wrong-pass")
        .await
        .expect_err("a wrong password");
    let unknown = verify("13900139000", "right-pass")
        .await
        .expect_err("an unknown mobile");
    for status in [&wrong, &unknown] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(wrong.message(), unknown.message(), "one answer for both");

    assert_invalid(
        &verify("2380013800", "right-pass").await.expect_err("bad"),
        "mobile",
    );
    assert_invalid(
        &verify("13800138000", "short").await.expect_err("bad"),
        "password",
    );
}

async fn an_old_hash_is_remade_with_todays_parameters_on_login(app: TestApp) {
    use argon2::{
        Algorithm, Argon2, Params, Version,
        password_hash::{PasswordHasher, SaltString, rand_core::OsRng},
    };
    let mut c = app.client.clone();
    c.create_user(create("13800138000", "right-pass", ""))
        .await
        .expect("create");
    // As an older release stored it: argon2id with a quarter of today's memory.
    let old_params = Params::new(4096, 1, 1, None).expect("params");
    let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, old_params)
        .hash_password(b"right-pass", &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string();
    let mut sql = app.db.connect().await;
    sql.execute(
        format!("UPDATE users SET password = '{old}' WHERE mobile = '13800138000'").as_str(),
    )
    .await
    .expect("store the old hash");
    assert!(stored_hash(&app, "13800138000").await.contains("m=4096"));

    c.verify_password(VerifyPasswordRequest {
        mobile: "13800138000".into(),
        password: "right-pass".into(),
    })
    .await
    .expect("the old hash still verifies");
    let remade = stored_hash(&app, "13800138000").await;
    let today = Params::default();
    assert!(
        remade.contains(&format!(
            "m={},t={},p={}",
            today.m_cost(),
            today.t_cost(),
            today.p_cost()
        )),
        "{remade}"
    );
    c.verify_password(VerifyPasswordRequest {
        mobile: "13800138000".into(),
        password: "right-pass".into(),
    })
    .await
    .expect("and the new one verifies");
}

/// The value of the sample `name{labels}` in Prometheus text (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn the_admin_port_metrics_move_with_the_calls(app: TestApp) {
    let list = r#"rpc_requests_total{method="/user.v1.User/GetUserList",code="OK"}"#;
    let missing = r#"rpc_requests_total{method="/user.v1.User/GetUserById",code="NOT_FOUND"}"#;
    let taken = r#"db_errors_total{kind="constraint"}"#;
    let before = app.metrics().await;
    assert_eq!(sample(&before, "rpc_serving"), 1.0, "{before}");
    let mut c = app.client.clone();
    for _ in 0..3 {
        c.get_user_list(PageInfo { pn: 1, p_size: 5 })
            .await
            .expect("list");
    }
    c.get_user_by_id(IdRequest { id: 999_999 })
        .await
        .expect_err("missing");
    c.create_user(create("13800138000", "s3cret-pass", ""))
        .await
        .expect("create");
    c.create_user(create("13800138000", "s3cret-pass", ""))
        .await
        .expect_err("taken");
    let after = app.metrics().await;
    assert_eq!(sample(&after, list) - sample(&before, list), 3.0, "{after}");
    assert_eq!(
        sample(&after, missing) - sample(&before, missing),
        1.0,
        "{after}"
    );
    assert!(
        sample(&after, taken) >= sample(&before, taken) + 1.0,
        "{after}"
    );
    let count = r#"rpc_duration_seconds_count{method="/user.v1.User/GetUserList"}"#;
    assert_eq!(
        sample(&after, count) - sample(&before, count),
        3.0,
        "{after}"
    );
    for series in [
        r#"db_pool_connections{state="in_use"}"#,
        r#"db_pool_connections{state="idle"}"#,
    ] {
        assert!(after.contains(series), "{series} in {after}");
    }
}

async fn seeding_twice_changes_nothing(app: TestApp) {
    seed_users(&app, 5).await;
    let before = app
        .client
        .clone()
        .get_user_list(PageInfo { pn: 1, p_size: 100 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(before.total, 6);
    let admin = &before.data[0];
    assert_eq!((admin.mobile.as_str(), admin.role), ("18800000000", 2));
    let admin_hash = stored_hash(&app, "18800000000").await;

    seed_users(&app, 5).await;
    let next = app
        .client
        .clone()
        .create_user(create("13999999999", "s3cret-pass", ""))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(next.id, 7, "the second seed used up no ids");
    let after = app
        .client
        .clone()
        .get_user_list(PageInfo { pn: 1, p_size: 100 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(after.total, before.total + 1, "only the user created above");
    assert_eq!(after.data[..6], before.data[..]);
    assert_eq!(stored_hash(&app, "18800000000").await, admin_hash);
}

async fn health_turns_not_serving_and_watch_ends_on_shutdown(mut app: TestApp) {
    let mut health = app.health_client().await;
    for service in ["", "user.v1.User"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nope".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("first").expect("ok").status;
    assert_eq!(first, ServingStatus::Serving as i32);

    app.begin_shutdown();
    let next = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("a status after shutdown")
        .expect("stream still open")
        .expect("ok");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let end = tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "the watch stream ends: {end:?}");

    app.exited(DEADLINE).await.expect("clean exit");
    assert!(
        tokio::net::TcpStream::connect(app.addr).await.is_err(),
        "the port no longer accepts"
    );
}

async fn reflection_lists_the_user_service(app: TestApp) {
    let mut reflection = ServerReflectionClient::new(support::channel(app.addr));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("a response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"user.v1.User"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

/// Holds the users table's write lock from a second connection, so a CreateUser call waits
/// inside user-srv while shutdown begins; releasing it must let the call finish with OK.
async fn an_in_flight_call_completes_across_shutdown(mut app: TestApp) {
    let mut locker = app.db.connect().await;
    match app.db.backend {
        Backend::Sqlite => {
            locker.execute("BEGIN IMMEDIATE").await.expect("lock");
        }
        Backend::Postgres => {
            locker.execute("BEGIN").await.expect("begin");
            locker
                .execute("LOCK TABLE users IN EXCLUSIVE MODE")
                .await
                .expect("lock");
        }
    }
    let mut c = app.client.clone();
    let call = tokio::spawn(async move {
        c.create_user(create("13800138000", "s3cret-pass", "late"))
            .await
    });
    let stats = app.stats.clone();
    eventually("the call is inside user-srv", DEADLINE, || {
        let n = stats.in_flight();
        async move { n == 1 }
    })
    .await;

    app.begin_shutdown();
    let health = app.health.clone();
    eventually("health NOT_SERVING", DEADLINE, || {
        let s = health.status("");
        async move { s == Some(ServingStatus::NotServing) }
    })
    .await;
    assert!(
        !app.has_exited(),
        "user-srv waits for the call it is running"
    );

    locker.execute("COMMIT").await.expect("unlock");
    let created = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the call finishes")
        .expect("task")
        .expect("the in-flight call succeeded");
    assert_eq!(created.into_inner().nick_name, "late");
    app.exited(DEADLINE)
        .await
        .expect("clean exit after the drain");
}
