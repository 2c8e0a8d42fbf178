//! The gRPC contracts of the services: the code generated from every
//! `proto/<name>/v1/<name>.proto`, each package's encoded file descriptor set (for server
//! reflection), and the rules of the user contract's fields ([`user_rules`]). `make
//! new-service` adds a package here.

pub mod user_rules;

/// Generated code and the descriptor set of one `<name>.v1` package.
macro_rules! package {
    ($name:ident, $package:literal, $descriptor:literal) => {
        pub mod $name {
            pub mod v1 {
                tonic::include_proto!($package);

                /// Encoded `FileDescriptorSet` of this package, for `tonic-reflection`.
                pub const FILE_DESCRIPTOR_SET: &[u8] =
                    tonic::include_file_descriptor_set!($descriptor);
            }
        }
    };
}

package!(user, "user.v1", "user_v1_descriptor");
pub use user::v1 as user_v1;
// new-service: packages
