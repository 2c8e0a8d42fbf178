//! gRPC transport for `user.v1.User`: decodes requests, calls the domain, encodes replies,
//! and maps [`domain::Error`] to a `tonic::Status` in exactly one place.

use proto::user_v1::{
    CreateUserInfo, IdRequest, MobileRequest, PageInfo, UpdateUserInfo, UserInfoResponse,
    UserListResponse, VerifyPasswordRequest, user_server,
};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{self, Error, Page, User, UserChanges, Users};

// The domain's role numbers are the contract's (`user.v1.Role`), checked at compile time.
const _: () = assert!(
    domain::Role::User as i32 == proto::user_v1::Role::User as i32
        && domain::Role::Admin as i32 == proto::user_v1::Role::Admin as i32
);

/// The `user.v1.User` service.
#[derive(Debug, Clone)]
pub struct UserService {
    users: Users,
}

impl UserService {
    pub fn new(users: Users) -> Self {
        Self { users }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument { field, message } => Status::with_error_details(
                Code::InvalidArgument,
                format!("{field}: {message}"),
                ErrorDetails::with_bad_request_violation(field, message),
            ),
            Error::NotFound => Status::not_found(e.to_string()),
            Error::BadCredentials => Status::unauthenticated(e.to_string()),
            Error::MobileTaken => Status::with_error_details(
                Code::AlreadyExists,
                e.to_string(),
                ErrorDetails::with_bad_request_violation("mobile", "already registered"),
            ),
            Error::Unavailable(ref source) => {
                tracing::error!(error = %source, "database unavailable");
                Status::unavailable(e.to_string())
            }
            Error::Internal(ref source) => {
                tracing::error!(error = %source, "internal error");
                Status::internal(e.to_string())
            }
        }
    }
}

/// A user as the API shows it: never with the password hash.
fn user_info(u: User) -> UserInfoResponse {
    UserInfoResponse {
        id: u.id,
        mobile: u.mobile,
        nick_name: u.nick_name,
        birthday: u.birthday.and_then(|b| u64::try_from(b).ok()).unwrap_or(0),
        gender: u.gender.as_str().to_owned(),
        role: u.role as i32,
    }
}

#[tonic::async_trait]
impl user_server::User for UserService {
    async fn get_user_list(
        &self,
        request: Request<PageInfo>,
    ) -> Result<Response<UserListResponse>, Status> {
        let p = request.into_inner();
        let (total, users) = self.users.list(Page::new(p.pn, p.p_size)).await?;
        Ok(Response::new(UserListResponse {
            total,
            data: users.into_iter().map(user_info).collect(),
        }))
    }

    async fn get_user_by_mobile(
        &self,
        request: Request<MobileRequest>,
    ) -> Result<Response<UserInfoResponse>, Status> {
        let user = self.users.by_mobile(&request.into_inner().mobile).await?;
        Ok(Response::new(user_info(user)))
    }

    async fn get_user_by_id(
        &self,
        request: Request<IdRequest>,
    ) -> Result<Response<UserInfoResponse>, Status> {
        let user = self.users.by_id(request.into_inner().id).await?;
        Ok(Response::new(user_info(user)))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserInfo>,
    ) -> Result<Response<UserInfoResponse>, Status> {
        let r = request.into_inner();
        let user = self
            .users
            .create(&r.mobile, &r.password, &r.nick_name)
            .await?;
        Ok(Response::new(user_info(user)))
    }

    async fn update_user(&self, request: Request<UpdateUserInfo>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let changes = UserChanges {
            nick_name: r.nick_name,
            gender: r.gender.as_deref().map(str::parse).transpose()?,
            birthday: r.birthday.map(domain::validate_birthday).transpose()?,
        };
        self.users.update(r.id, changes).await?;
        Ok(Response::new(()))
    }

    async fn verify_password(
        &self,
        request: Request<VerifyPasswordRequest>,
    ) -> Result<Response<UserInfoResponse>, Status> {
        let r = request.into_inner();
        let user = self.users.verify(&r.mobile, &r.password).await?;
        Ok(Response::new(user_info(user)))
    }
}
