//! The AML checked byte by byte against encodings worked out by hand from the ACPI 6.5
//! grammar (20.2), and, where `iasl` is installed, disassembled whole.

use super::*;

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[track_caller]
fn assert_contains(haystack: &[u8], needle: &[u8]) {
    assert!(
        contains(haystack, needle),
        "{needle:02x?} not in {haystack:02x?}"
    );
}

/// Decodes a PkgLength (20.2.4) at the start of `bytes`: (the length it encodes, its own size).
fn pkg_length(bytes: &[u8]) -> (usize, usize) {
    let follow = usize::from(bytes[0] >> 6);
    if follow == 0 {
        return (usize::from(bytes[0] & 0x3f), 1);
    }
    let mut len = usize::from(bytes[0] & 0x0f);
    for (i, &b) in bytes[1..=follow].iter().enumerate() {
        len |= usize::from(b) << (4 + 8 * i);
    }
    (len, 1 + follow)
}

/// Splits a body into its top-level `Device` objects (`5B 82 PkgLength ...`), checking each
/// one's PkgLength ends exactly where the next begins. `\_S5_` must come first.
fn devices(body: &[u8]) -> Vec<&[u8]> {
    let s5 = s5_aml();
    assert_eq!(&body[..s5.len()], &s5[..]);
    let mut rest = &body[s5.len()..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert_eq!(&rest[..2], &[0x5b, 0x82], "not a Device: {rest:02x?}");
        let (len, _) = pkg_length(&rest[2..]);
        let (device, next) = rest.split_at(2 + len);
        out.push(device);
        rest = next;
    }
    out
}

/// A Device's name: the four bytes after `\_SB_.` (`5C 2E` "_SB_" NAME).
fn device_name(device: &[u8]) -> &[u8] {
    let (_, size) = pkg_length(&device[2..]);
    let path = &device[2 + size..];
    assert_eq!(&path[..6], b"\\\x2e_SB_");
    &path[6..10]
}

#[test]
fn s5_is_the_sleep_type_package() {
    // NameOp, "\_S5_", PackageOp, PkgLength 8, NumElements 4, BytePrefix 5 twice, Zero twice.
    assert_eq!(
        s5_aml(),
        [
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00,
            0x00
        ]
    );
}

#[test]
fn legacy_devices_have_their_eisa_ids_and_resources() {
    // _HID as a DWordConst of the compressed EISA ID: "PNP" is 0x41d0, then the product.
    let hid = |id: [u8; 2]| [0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0, id[0], id[1]];
    // Extended Interrupt descriptor: length 6, flags consumer | edge, one interrupt.
    let irq = |n: u8| [0x89, 0x06, 0x00, 0x03, 0x01, n, 0, 0, 0];

    let com1 = com1_aml();
    assert_eq!(device_name(&com1), b"COM1");
    assert_contains(&com1, &hid([0x05, 0x01]));
    assert_contains(&com1, &[0x08, b'_', b'U', b'I', b'D', 0x00]);
    // I/O descriptor: 16-bit decode, min = max = 0x3f8, alignment 1, 8 ports.
    assert_contains(&com1, &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]);
    assert_contains(&com1, &irq(4));

    let kbd = i8042_aml();
    assert_eq!(device_name(&kbd), b"PS2K");
    assert_contains(&kbd, &hid([0x03, 0x03]));
    // Data port, then command port, then IRQ 1, then the end tag.
    assert_contains(
        &kbd,
        &[
            [0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01].as_slice(),
            &[0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01],
            &irq(1),
            &[0x79, 0x00],
        ]
        .concat(),
    );

    let rtc = cmos_rtc_aml();
    assert_eq!(device_name(&rtc), b"RTC_");
    assert_contains(&rtc, &hid([0x0b, 0x00]));
    assert_contains(&rtc, &[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]);
    assert_contains(&rtc, &irq(8));
}

#[test]
fn virtio_mmio_windows_are_named_by_index() {
    let window = VirtioMmioWindow {
        base: 0xd000_1000,
        size: 0x1000,
        gsi: 5,
    };
    let v = virtio_mmio_aml(10, &window).unwrap();
    assert_eq!(device_name(&v), b"V00A");
    assert_contains(&v, b"\x08_HID\x0dLNRO0005\x00");
    assert_contains(&v, b"\x08_UID\x0a\x0a");
    // Memory32Fixed: length 9, read-write, base, size.
    assert_contains(
        &v,
        &[
            0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00,
        ],
    );
    assert_contains(&v, &[0x89, 0x06, 0x00, 0x03, 0x01, 5, 0, 0, 0]);
    assert_eq!(
        device_name(&virtio_mmio_aml(MAX_MMIO_WINDOWS - 1, &window).unwrap()),
        b"VFFF"
    );

    // The last window that fits ends at 4 GiB.
    let top = VirtioMmioWindow {
        base: 0xffff_f000,
        ..window
    };
    assert!(virtio_mmio_aml(0, &top).is_ok());
    for base in [0xffff_f001, 0x1_0000_0000, u64::MAX] {
        let err = virtio_mmio_aml(0, &VirtioMmioWindow { base, ..window }).unwrap_err();
        assert!(
            matches!(err, Error::MmioWindowAbove4G { base: b, size: 0x1000 } if b == base),
            "{err}"
        );
    }
    assert!(matches!(
        virtio_mmio_aml(MAX_MMIO_WINDOWS, &window),
        Err(Error::TooManyMmioWindows { .. })
    ));
    let many = DsdtDevices {
        virtio_mmio: vec![window; MAX_MMIO_WINDOWS + 1],
        ..DsdtDevices::default()
    };
    let err = many.dsdt_body().unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyMmioWindows {
                count: 4097,
                max: 4096
            }
        ),
        "{err}"
    );
}

#[test]
fn vmgenid_has_its_ids_and_address_package() {
    let v = vmgenid_aml(0x1_0009_f000);
    assert_eq!(device_name(&v), b"VGEN");
    assert_contains(&v, b"\x08_HID\x0dVMGENCTR\x00");
    assert_contains(&v, b"\x08_CID\x0dVM_Gen_Counter\x00");
    // Name (ADDR, Package (2) { 0x0009f000, One }).
    assert_contains(
        &v,
        &[
            0x08, b'A', b'D', b'D', b'R', 0x12, 0x08, 0x02, 0x0c, 0x00, 0xf0, 0x09, 0x00, 0x01,
        ],
    );
}

#[test]
fn ged_evt_notifies_vmgenid_for_its_only_gsi() {
    for gsi in [5u32, 300] {
        let ged = ged_aml(gsi);
        assert_eq!(device_name(&ged), b"GED_");
        assert_contains(&ged, b"\x08_HID\x0dACPI0013\x00");
        // The one interrupt of its _CRS: an Extended Interrupt descriptor (ACPI 6.5, 6.4.3.6)
        // with one GSI.
        let g = gsi.to_le_bytes();
        let interrupt = [0x89, 0x06, 0x00, 0x03, 0x01, g[0], g[1], g[2], g[3]];
        assert_contains(&ged, &interrupt);
        assert_eq!(
            ged.windows(interrupt.len())
                .filter(|w| w[..5] == interrupt[..5])
                .count(),
            1,
            "{ged:02x?}"
        );
    }
    // Method (_EVT, 1, NotSerialized) { Notify (\_SB_.VGEN, 0x80) }, ending the device:
    // MethodOp, PkgLength, the name, MethodFlags (ACPI 6.5, 20.2.5.2: 1 argument, bit 3 clear:
    // not serialized), then NotifyOp, the root-prefixed dual name and the byte 0x80.
    assert!(ged_aml(5).ends_with(&[
        0x14, 0x13, b'_', b'E', b'V', b'T', 0x01, 0x86, b'\\', 0x2e, b'_', b'S', b'B', b'_', b'V',
        b'G', b'E', b'N', 0x0a, 0x80
    ]));
}

fn full() -> DsdtDevices {
    DsdtDevices {
        virtio_mmio: (0..3)
            .map(|i| VirtioMmioWindow {
                base: 0xd000_1000 + i * 0x1000,
                size: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect(),
        vmgenid: Some(VmGenIdWiring {
            address: 0x9_f000,
            gsi: 8 + 3,
        }),
        ..DsdtDevices::pc()
    }
}

#[test]
fn body_is_s5_then_each_device_in_order() {
    let names = |body: &[u8]| -> Vec<Vec<u8>> {
        devices(body)
            .into_iter()
            .map(|d| device_name(d).to_vec())
            .collect()
    };
    assert_eq!(DsdtDevices::default().dsdt_body().unwrap(), s5_aml());
    let pc = DsdtDevices::pc().dsdt_body().unwrap();
    assert_eq!(names(&pc), [b"COM1", b"PS2K", b"RTC_"]);
    assert_eq!(
        pc,
        [s5_aml(), com1_aml(), i8042_aml(), cmos_rtc_aml()].concat()
    );

    let body = full().dsdt_body().unwrap();
    assert_eq!(
        names(&body),
        [b"COM1", b"PS2K", b"RTC_", b"V000", b"V001", b"V002", b"VGEN", b"GED_"]
    );
    assert!(devices(&body).ends_with(&[&vmgenid_aml(0x9_f000)[..], &ged_aml(11)[..]]));
}

/// Disassembles the body, wrapped in a DSDT header, with ACPICA's `iasl` (Debian's
/// `acpica-tools`): it must decode without errors into the objects asked for.
#[test]
fn iasl_disassembles_the_body() {
    if std::process::Command::new("iasl")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("skipped: iasl not installed (apt-get install acpica-tools)");
        return;
    }
    let mut dsdt = acpi_tables::sdt::Sdt::new(*b"DSDT", 36, 2, *b"PETREL", *b"PETRELDT", 1);
    dsdt.append_slice(&full().dsdt_body().unwrap());
    let dir = std::env::temp_dir().join(format!("petrel-dsdt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let aml = dir.join("dsdt.aml");
    std::fs::write(&aml, dsdt.as_slice()).unwrap();
    let out = std::process::Command::new("iasl")
        .arg("-d")
        .arg(&aml)
        .output()
        .unwrap();
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl"));
    std::fs::remove_dir_all(&dir).unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "iasl -d failed:\n{log}");
    let dsl = dsl.unwrap_or_else(|e| panic!("iasl wrote no dsdt.dsl ({e}):\n{log}"));
    for expected in [
        "Name (\\_S5, Package (0x04)",
        "Device (\\_SB.COM1)",
        "Name (_HID, EisaId (\"PNP0501\")",
        "IO (Decode16,\n                0x03F8,",
        "Device (\\_SB.PS2K)",
        "Name (_HID, EisaId (\"PNP0303\")",
        "Device (\\_SB.RTC)",
        "Name (_HID, EisaId (\"PNP0B00\")",
        "Device (\\_SB.V002)",
        "Name (_HID, \"LNRO0005\")",
        "Name (_UID, 0x02)",
        "Memory32Fixed (ReadWrite,\n                0xD0003000,",
        "Device (\\_SB.VGEN)",
        "Name (_HID, \"VMGENCTR\")",
        "Name (_CID, \"VM_Gen_Counter\")",
        "Name (ADDR, Package (0x02)\n        {\n            0x0009F000, \n            Zero\n        })",
        "Device (\\_SB.GED)",
        "Name (_HID, \"ACPI0013\"",
        "Method (_EVT, 1, NotSerialized)",
        "Notify (\\_SB.VGEN, 0x80)",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n            {\n                0x0000000B,",
    ] {
        assert!(dsl.contains(expected), "{expected:?} not in:\n{dsl}");
    }
    assert!(!dsl.to_lowercase().contains("error"), "{dsl}");
}
