//! @name@-srv over the wire, on SQLite and on PostgreSQL (`TEST_DATABASE_URL`; `make test`
//! starts one): List/Get/Create and their errors, health by service name, and registration
//! in Consul (the double, or the agent at `CONSUL_HTTP_ADDR`).

use std::time::Duration;

use kit::config::{ServerFlags, ServiceSettings};
use proto::@snake@::v1::{
    CreateItemRequest, GetItemRequest, ListItemsRequest, @snake@_client::@Camel@Client,
};
use test_support::{Agent, Backend, TestDb, eventually};
use tokio::sync::oneshot;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use @snake@_srv::{Application, Settings};

struct Running {
    channel: Channel,
    service_id: Option<String>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), kit::grpc::ServeError>>,
    _db: TestDb,
}

async fn start(backend: Backend, extra: &[(&str, &str)]) -> Option<Running> {
    bootstrap::init_test_logging();
    let db = TestDb::create(backend).await?;
    let mut env = vec![
        ("DATABASE_URL".to_owned(), db.url.clone()),
        ("@UPPER@_SRV__REGISTRATION__ENABLED".to_owned(), "false".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::load_from(&ServerFlags::default(), env).expect("settings");
    let app = Application::build(&settings).await.expect("builds");
    let addr = app.server().local_addr();
    let service_id = app.server().service_id().map(str::to_owned);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    Some(Running {
        channel,
        service_id,
        stop,
        task,
        _db: db,
    })
}

/// A call's outcome reduced to its gRPC code.
fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), Code> {
    r.map(|_| ()).map_err(|s| s.code())
}

async fn create_get_list_and_errors(backend: Backend) {
    let Some(running) = start(backend, &[]).await else {
        return;
    };
    let mut client = @Camel@Client::new(running.channel.clone());
    for (name, price) in [("first", 100), ("second", 250), ("third", 0)] {
        let item = client
            .create_item(CreateItemRequest {
                name: name.into(),
                price,
            })
            .await
            .expect("create")
            .into_inner();
        assert_eq!((item.name.as_str(), item.price), (name, price));
        assert!(item.id > 0 && item.created_at > 0);
    }
    let page = client
        .list_items(ListItemsRequest { pn: 1, p_size: 2 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.total, 3);
    let names: Vec<&str> = page.data.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    let past_the_end = client
        .list_items(ListItemsRequest { pn: 9, p_size: 2 })
        .await
        .expect("list")
        .into_inner();
    assert_eq!((past_the_end.total, past_the_end.data.len()), (3, 0));

    let id = page.data[1].id;
    let item = client
        .get_item(GetItemRequest { id })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(item.name, "second");

    assert_eq!(code(client.get_item(GetItemRequest { id: 999 }).await), Err(Code::NotFound));
    assert_eq!(code(client.get_item(GetItemRequest { id: -1 }).await), Err(Code::InvalidArgument));
    let taken = client
        .create_item(CreateItemRequest { name: "first".into(), price: 1 })
        .await;
    assert_eq!(code(taken), Err(Code::AlreadyExists));
    let negative = client
        .create_item(CreateItemRequest { name: "x".into(), price: -5 })
        .await;
    assert_eq!(code(negative), Err(Code::InvalidArgument));
    // The kit's paging rule: a size above the largest page is capped, not refused.
    let too_big = client
        .list_items(ListItemsRequest { pn: 1, p_size: kit::page::MAX_SIZE + 1 })
        .await;
    assert!(too_big.is_ok(), "{too_big:?}");

    let health = HealthClient::new(running.channel.clone())
        .check(HealthCheckRequest {
            service: "@snake@.v1.@Camel@".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    let _ = running.stop.send(());
    running
        .task
        .await
        .expect("joins")
        .expect("stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_and_errors_on_sqlite() {
    create_get_list_and_errors(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_and_errors_on_postgres() {
    create_get_list_and_errors(Backend::Postgres).await;
}

/// `/v1/health/service/@name@-srv?passing`: the IDs listed.
async fn passing(agent: &str) -> Vec<String> {
    let url = format!("{agent}/v1/health/service/@name@-srv?passing");
    let Ok(response) = reqwest::get(url).await else {
        return Vec::new();
    };
    let entries: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| e["Service"]["ID"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_in_consul_and_leaves_on_shutdown() {
    let consul = Agent::start(consul_double::DoubleConfig::default()).await;
    let agent = consul.url();
    let running = start(
        Backend::Sqlite,
        &[
            ("@UPPER@_SRV__REGISTRATION__ENABLED", "true"),
            ("CONSUL_HTTP_ADDR", &agent),
        ],
    )
    .await
    .expect("sqlite always runs");
    let id = running.service_id.clone().expect("registration on");
    assert!(id.starts_with("@name@-srv-") && id.len() == "@name@-srv-".len() + 36, "{id}");
    eventually("registered and passing", Duration::from_secs(10), || async {
        passing(&agent).await.contains(&id)
    })
    .await;
    let _ = running.stop.send(());
    running.task.await.expect("joins").expect("stops cleanly");
    eventually("deregistered", Duration::from_secs(10), || async {
        !passing(&agent).await.contains(&id)
    })
    .await;
}
