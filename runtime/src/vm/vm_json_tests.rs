//! `vm.json` written by earlier versions still loads: the VMM and virtiofsd processes were
//! recorded with `starttime` before [`ProcessIdentity`] became the one process record.

use super::{Provider, VmState};
use crate::host::process::ProcessIdentity;

#[test]
fn a_vm_json_of_the_previous_version_loads() {
    let old = r#"{
  "provider": "qemu",
  "accel": "tcg",
  "process": {"pid": 5150, "starttime": 123456},
  "control_socket": "/h/envs/web-1/control.sock",
  "console_log": "/h/envs/web-1/console.log",
  "disk": "/h/envs/web-1/disk.qcow2",
  "vcpus": 2,
  "memory": 1073741824,
  "kernel_release": "6.1.0-28-amd64",
  "started_at_ms": 1700000000000,
  "boot_ms": 850,
  "vsock_socket": null,
  "shares": [{"pid": 5151, "starttime": 123460}],
  "qmp_socket": "/h/envs/web-1/qmp.sock"
}"#;
    let st: VmState = serde_json::from_str(old).unwrap();
    assert_eq!(st.provider, Provider::Qemu);
    assert_eq!(
        st.process,
        Some(ProcessIdentity {
            pid: 5150,
            start_time: 123456
        })
    );
    assert_eq!(
        st.shares,
        [ProcessIdentity {
            pid: 5151,
            start_time: 123460
        }]
    );
    // Written back in the one format, and read again.
    let again: VmState = serde_json::from_value(serde_json::to_value(&st).unwrap()).unwrap();
    assert_eq!(again, st);
}
