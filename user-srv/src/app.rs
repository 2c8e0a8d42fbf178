//! The running service: the kit's gRPC runner with `user.v1.User` added, over the database
//! it checks for readiness. [`Application::build`] opens the database and binds;
//! [`Application::run_until_stopped`] serves until the shutdown future resolves.

use std::future::Future;

use kit::{
    db::{Db, DbError},
    grpc::{GrpcServer, ServeError},
};
use proto::user_v1::{FILE_DESCRIPTOR_SET, user_server::UserServer};

use crate::{config::Settings, domain::Users, grpc::UserService, repo};

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
        let users = UserService::new(Users::new(repo::store(&db)));
        let server = GrpcServer::bind(
            kit::identity!(),
            &settings.server,
            &settings.consul,
            &settings.registration,
            &settings.connect,
        )
        .await?
        .add_service(UserServer::new(users))
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
