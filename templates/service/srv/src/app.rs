//! The running service: the kit's gRPC runner with `@snake@.v1.@Camel@` added, over the
//! database it checks for readiness.

use std::future::Future;

use kit::{
    db::{Db, DbError},
    grpc::{GrpcServer, ServeError},
};
use proto::@snake@::v1::{FILE_DESCRIPTOR_SET, @snake@_server::@Camel@Server};

use crate::{config::Settings, domain::Domain, grpc::@Camel@Service, repo};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Server(#[from] kit::StartError),
}

#[derive(Debug)]
pub struct Application {
    server: GrpcServer,
    db: Db,
}

impl Application {
    /// Opens the database (migrating it unless told not to), checks it answers, then binds.
    pub async fn build(settings: &Settings) -> Result<Self, StartError> {
        let db = Db::connect(&settings.database, &repo::MIGRATIONS).await?;
        let service = @Camel@Service::new(Domain::new(repo::store(&db)));
        let server = GrpcServer::bind(
            kit::identity!(),
            &settings.server,
            &settings.consul,
            &settings.registration,
            &settings.connect,
        )
        .await?
        .add_service(@Camel@Server::new(service))
        .with_descriptor_set(FILE_DESCRIPTOR_SET)
        .with_database(&db, settings.database.check_interval);
        Ok(Self { server, db })
    }

    pub fn server(&self) -> &GrpcServer {
        &self.server
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.server.run_until_stopped(shutdown).await
    }
}
