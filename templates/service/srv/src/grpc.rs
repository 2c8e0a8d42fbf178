//! gRPC transport for `@snake@.v1.@Camel@`: decodes requests, calls the domain, encodes
//! replies, and maps [`domain::Error`] to a `tonic::Status` in exactly one place.

use proto::@snake@::v1::{
    CreateItemRequest, GetItemRequest, Item as ItemInfo, ListItemsRequest, ListItemsResponse,
    @snake@_server,
};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{Domain, Error, Item};

/// The `@snake@.v1.@Camel@` service.
#[derive(Debug, Clone)]
pub struct @Camel@Service {
    domain: Domain,
}

impl @Camel@Service {
    pub fn new(domain: Domain) -> Self {
        Self { domain }
    }
}

fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument { field, message } => Status::with_error_details(
            Code::InvalidArgument,
            format!("{field}: {message}"),
            ErrorDetails::with_bad_request_violation(field, message),
        ),
        Error::NotFound => Status::not_found(e.to_string()),
        Error::NameTaken => Status::with_error_details(
            Code::AlreadyExists,
            e.to_string(),
            ErrorDetails::with_bad_request_violation("name", "already exists"),
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

fn info(i: Item) -> ItemInfo {
    ItemInfo {
        id: i.id,
        name: i.name,
        price: i.price,
        created_at: i.created_at,
    }
}

#[tonic::async_trait]
impl @snake@_server::@Camel@ for @Camel@Service {
    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<Response<ListItemsResponse>, Status> {
        let r = request.into_inner();
        let (total, items) = self.domain.list(r.pn, r.p_size).await.map_err(status)?;
        Ok(Response::new(ListItemsResponse {
            total,
            data: items.into_iter().map(info).collect(),
        }))
    }

    async fn get_item(&self, request: Request<GetItemRequest>) -> Result<Response<ItemInfo>, Status> {
        let item = self.domain.get(request.into_inner().id).await.map_err(status)?;
        Ok(Response::new(info(item)))
    }

    async fn create_item(
        &self,
        request: Request<CreateItemRequest>,
    ) -> Result<Response<ItemInfo>, Status> {
        let r = request.into_inner();
        let item = self.domain.create(&r.name, r.price).await.map_err(status)?;
        Ok(Response::new(info(item)))
    }
}
