//! The gRPC contract shared by user-srv and its clients: the code generated from
//! `proto/user/v1/user.proto` and its encoded file descriptor set (for server reflection).

pub mod user {
    pub mod v1 {
        tonic::include_proto!("user.v1");

        /// Encoded `FileDescriptorSet` of `user.v1`, for `tonic-reflection`.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("user_v1_descriptor");
    }
}

pub use user::v1 as user_v1;
