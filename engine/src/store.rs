//! Where tables live: an object-store root from a URL, and the paths inside it.
//!
//! ```text
//! --object-store URL ──lake_store()──▶ Lake { store (rooted at the URL's path), url }
//!                                       └─ table_path(tenant, table) = tenants/<tenant>/tables/<table>
//! ```
//! Every path Vigie writes is made by [`table_path`], so the layout is defined in one place.

use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::local_disk::LocalDisk;
use crate::schema::TableKind;
use crate::{Error, Result};

/// A tenant's name: lowercase letters, digits, `_` and `-`, 1 to 63 bytes (safe in every object
/// store and as a SQL identifier once quoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(String);

impl TenantName {
    /// The tenant that exists until tenants are managed: `default`.
    pub fn default_tenant() -> Self {
        Self("default".into())
    }

    /// Checks and wraps a tenant name.
    pub fn new(name: &str) -> Result<Self> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.into()))
        } else {
            Err(Error::InvalidConfig(format!(
                "tenant name {name:?} must be 1 to 63 characters among a-z, 0-9, '_' and '-'"
            )))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The path of a table inside the lake root: `tenants/<tenant>/tables/<table>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePath(Path);

impl TablePath {
    /// The object-store path of the table's root directory.
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for TablePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The one function that lays out table paths.
pub fn table_path(tenant: &TenantName, table: TableKind) -> TablePath {
    TablePath(Path::from_iter([
        "tenants",
        tenant.as_str(),
        "tables",
        table.name(),
    ]))
}

/// The object-store root that holds every tenant's tables.
#[derive(Debug, Clone)]
pub struct Lake {
    /// The store at the root of the URL's scheme and authority (`/` locally, the bucket on S3),
    /// as Delta and DataFusion expect it.
    pub root_store: Arc<dyn ObjectStore>,
    /// The lake's path inside `root_store` (the URL's path).
    pub prefix: Path,
    /// The lake's URL, ending with `/`.
    pub url: Url,
}

impl Lake {
    /// The URL of a table directory (for Delta, which names tables by URL).
    pub fn table_url(&self, path: &TablePath) -> Result<Url> {
        self.url
            .join(&format!("{}/", path.as_path()))
            .map_err(|e| Error::InvalidConfig(format!("cannot make a table URL: {e}")))
    }

    /// The path of a table directory inside `root_store`.
    pub fn table_root(&self, path: &TablePath) -> Path {
        self.prefix.parts().chain(path.as_path().parts()).collect()
    }

    /// The store seen from inside a table directory.
    pub fn table_store(&self, path: &TablePath) -> Arc<dyn ObjectStore> {
        Arc::new(PrefixStore::new(
            self.root_store.clone(),
            self.table_root(path),
        ))
    }

    /// The URL of `root_store` (scheme and authority only), under which a DataFusion runtime
    /// registers it.
    pub fn root_url(&self) -> Url {
        let mut url = self.url.clone();
        url.set_path("/");
        url.set_query(None);
        url.set_fragment(None);
        url
    }

    /// The tenants that have tables in this lake (the directories under `tenants/`).
    pub async fn tenants(&self) -> Result<Vec<TenantName>> {
        let dir: Path = self
            .prefix
            .parts()
            .chain(Path::from("tenants").parts())
            .collect();
        let listing = self.root_store.list_with_delimiter(Some(&dir)).await?;
        let mut names = Vec::new();
        for prefix in listing.common_prefixes {
            if let Some(name) = prefix.filename() {
                names.push(TenantName::new(name)?);
            }
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    /// A lake on a store built elsewhere (a wrapper adding faults, metrics or caching): `root_store`
    /// is the root of `url`'s scheme and authority, the lake is at `url`'s path inside it.
    pub fn from_store(root_store: Arc<dyn ObjectStore>, url: &Url) -> Result<Self> {
        let mut url = url.clone();
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let prefix = Path::from_url_path(url.path())
            .map_err(|e| Error::InvalidConfig(format!("invalid path in {url}: {e}")))?;
        Ok(Self {
            root_store,
            prefix,
            url,
        })
    }

    /// Opens the lake at `url` (`file://`, `memory://`, `s3://`, `gs://`, `az://`/`abfs://`).
    ///
    /// Cloud credentials and endpoints come from the standard environment variables
    /// (`AWS_*` incl. `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`).
    pub fn open(url: &Url) -> Result<Self> {
        let root_store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| {
                    Error::InvalidConfig(format!("{url} is not a local directory URL"))
                })?;
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::InvalidConfig(format!("cannot create {}: {e}", dir.display()))
                })?;
                Arc::new(LocalDisk::new())
            }
            "memory" => Arc::new(InMemory::new()),
            "s3" | "s3a" => Arc::new(AmazonS3Builder::from_env().with_url(url.as_str()).build()?),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .build()?,
            ),
            "az" | "abfs" | "abfss" | "azure" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .build()?,
            ),
            other => {
                return Err(Error::InvalidConfig(format!(
                    "unsupported object store scheme {other:?} in {url}: use file://, memory://, s3://, gs:// or az://"
                )));
            }
        };
        Self::from_store(root_store, url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = table_path(&TenantName::default_tenant(), TableKind::Reports);
        assert_eq!(p.to_string(), "tenants/default/tables/reports");
        let lake = Lake::open(&Url::parse("memory:///lake").unwrap()).unwrap();
        assert_eq!(
            lake.table_url(&p).unwrap().as_str(),
            "memory:///lake/tenants/default/tables/reports/"
        );
        assert_eq!(
            lake.table_root(&p).as_ref(),
            "lake/tenants/default/tables/reports"
        );
        assert_eq!(lake.root_url().as_str(), "memory:///");
    }

    #[test]
    fn tenant_names_are_checked() {
        assert!(TenantName::new("police-paris_1").is_ok());
        assert!(TenantName::new("").is_err());
        assert!(TenantName::new("../x").is_err());
        assert!(TenantName::new("Upper").is_err());
    }

    #[test]
    fn unknown_scheme_is_a_clear_error() {
        let err = Lake::open(&Url::parse("ftp://x/y").unwrap()).unwrap_err();
        assert!(err.to_string().contains("unsupported object store scheme"));
    }
}
