//! The S3 backend: one object per blob in a bucket, through `aws-sdk-s3`. Each upload is one PUT
//! of the staged file, which S3 makes visible atomically.

use std::path::PathBuf;

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::{Backend, BlobMeta, Error, Result, S3Config, Staged};

/// Bounds a listing: pages of up to 1,000 keys each.
const LIST_PAGES_MAX: usize = 10_000;

pub(crate) struct S3 {
    client: aws_sdk_s3::Client,
    bucket: String,
    staging: PathBuf,
}

fn s3_error(context: impl Into<String>, err: impl std::error::Error) -> Error {
    // The SDK's Display is terse ("service error"); its source chain says what happened.
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    Error::S3 {
        context: context.into(),
        message,
    }
}

impl S3 {
    pub(crate) async fn open(config: &S3Config) -> Result<S3> {
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .force_path_style(config.path_style);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        builder = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => builder.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "invicta-config",
            )),
            (None, None) => builder.credentials_provider(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
            _ => {
                return Err(Error::S3 {
                    context: "configure S3".into(),
                    message: "set both access_key_id and secret_access_key, or neither".into(),
                });
            }
        };
        let client = aws_sdk_s3::Client::from_conf(builder.build());
        Ok(S3 {
            client,
            bucket: config.bucket.clone(),
            staging: config
                .staging_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("invicta-blob-staging")),
        })
    }
}

#[async_trait]
impl Backend for S3 {
    async fn put_staged(&self, key: &str, staged: Staged) -> Result<()> {
        let body = ByteStream::from_path(&staged.file)
            .await
            .map_err(|e| s3_error(format!("read staged upload of {key}"), e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(i64::try_from(staged.size).unwrap_or(i64::MAX))
            .body(body)
            .send()
            .await
            .map_err(|e| s3_error(format!("put {key}"), e))?;
        drop(staged);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|e| e.is_no_such_key()) {
                    Error::NotFound {
                        key: key.to_string(),
                    }
                } else {
                    s3_error(format!("get {key}"), e)
                }
            })?;
        let body = response
            .body
            .collect()
            .await
            .map_err(|e| s3_error(format!("read {key}"), e))?;
        Ok(body.into_bytes())
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(BlobMeta {
                key: key.to_string(),
                size: head
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
            })),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(s3_error(format!("head {key}"), e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error(format!("delete {key}"), e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut count = 0;
        while let Some(page) = pages.next().await {
            count += 1;
            if count > LIST_PAGES_MAX {
                return Err(Error::S3 {
                    context: format!("list {prefix}"),
                    message: format!("more than {LIST_PAGES_MAX} pages"),
                });
            }
            let page = page.map_err(|e| s3_error(format!("list {prefix}"), e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    found.push(BlobMeta {
                        key: key.to_string(),
                        size: object
                            .size()
                            .and_then(|n| u64::try_from(n).ok())
                            .unwrap_or(0),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn staging_dir(&self) -> PathBuf {
        self.staging.clone()
    }
}
