//! Removing everything a node's network made: the nft tables, the pods'
//! veths, the VXLAN device and the bridge (the routes through them go with
//! them), and the IPAM records.

use std::path::Path;

use crate::links::{self, Links};
use crate::{NetConfig, NetError, nft};

pub async fn uninstall(net: &NetConfig, state_dir: &Path) -> Result<(), NetError> {
    nft::delete_table(&net.proxy_table()).await?;
    nft::delete_table(&net.pods_table()).await?;
    let links = Links::connect()?;
    if let Some(bridge) = links.index(&net.bridge).await? {
        for link in links.all().await? {
            if links::link_controller(&link) == Some(bridge)
                && let Some(name) = links::link_name(&link)
            {
                links.delete(name).await?;
            }
        }
    }
    links.delete(&net.vxlan_device()).await?;
    links.delete(&net.bridge).await?;
    let dir = state_dir.join("net");
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(NetError::Io(dir.display().to_string(), e))
        }
        _ => Ok(()),
    }
}
