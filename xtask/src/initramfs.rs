//! The boot test's initramfs: an uncompressed `newc` cpio archive (the kernel unpacks a
//! compressed one far too slowly when its code is emulated) holding `/dev/console` and an
//! `/init` of a few hundred bytes that prints [`MARKER`] and reboots ([`init_program`]).
//!
//! It used to hold Debian's static busybox (1.9 MiB) and a shell script: the kernel spent
//! about 15 s unpacking it on an emulating host. The root filesystems of the virtio-blk
//! scenarios still carry busybox and [`init_script`].

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::cache::{publish_dir, Cache, KeyBuilder, Lock};
use crate::elf;
use crate::error::{Error, IoContext, Result};
use petrel_demo_guest::elf::{exec_elf, ExecLayout};

/// The line /init prints once it runs; only user-mode code can produce it.
pub const MARKER: &str = "PETREL-BOOT-TEST-INIT-OK";

/// Changes whenever the recipe below changes in a way that alters the archive.
pub const RECIPE_VERSION: &str = "petrel-initramfs-recipe-2";

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The file name of the archive inside its cache entry.
const FILE_NAME: &str = "initramfs.cpio";

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// The name of the entry that ends a newc archive.
const TRAILER: &str = "TRAILER!!!";

/// Size of a newc header: the magic and 13 fields of 8 hex digits.
pub const HEADER_LEN: usize = 110;

/// What [`init_program`] prints when `reboot` returns (it should not); the boot test
/// fails on it, as on the script's line.
pub const REBOOT_FAILED: &str = "PETREL-BOOT-TEST-REBOOT-FAILED";

/// Where the ELF [`init_program`] is loaded.
const INIT_BASE: u64 = 0x40_0000;
/// ELF64 header and one program header: the code starts right after them.
const INIT_CODE_OFFSET: usize = 64 + 56;

/// The initramfs's `/init`: a static x86-64 Linux ELF executable, written here byte by
/// byte, that does what [`init_script`] does without a shell:
///
/// ```text
/// write(1, "MARKER\n")                     ; fd 1 is /dev/console, opened by the kernel
/// sync()
/// reboot(0xfee1dead, 0x28121969, 0x01234567 /* RB_AUTOBOOT */, 0)
/// write(1, "PETREL-BOOT-TEST-REBOOT-FAILED\n")   ; only if reboot returned
/// exit(1)
/// ```
pub fn init_program() -> Vec<u8> {
    let marker = format!("{MARKER}\n");
    let failed = format!("{REBOOT_FAILED}\n");
    // Machine code, with the rel32 of each `lea rsi, [rip + rel32]` patched below once
    // the strings' offsets are known: (where the rel32 is, which string).
    let mut code: Vec<u8> = Vec::new();
    let mut fixups: Vec<(usize, usize)> = Vec::new();
    let mov_eax = |c: &mut Vec<u8>, v: u32| {
        c.push(0xb8);
        c.extend_from_slice(&v.to_le_bytes());
    };
    let mov_edi = |c: &mut Vec<u8>, v: u32| {
        c.push(0xbf);
        c.extend_from_slice(&v.to_le_bytes());
    };
    let mov_esi = |c: &mut Vec<u8>, v: u32| {
        c.push(0xbe);
        c.extend_from_slice(&v.to_le_bytes());
    };
    let mov_edx = |c: &mut Vec<u8>, v: u32| {
        c.push(0xba);
        c.extend_from_slice(&v.to_le_bytes());
    };
    const SYSCALL: [u8; 2] = [0x0f, 0x05];
    let write = |c: &mut Vec<u8>, f: &mut Vec<(usize, usize)>, which: usize, len: usize| {
        mov_eax(c, 1); // write
        mov_edi(c, 1);
        c.extend_from_slice(&[0x48, 0x8d, 0x35]); // lea rsi, [rip + rel32]
        f.push((c.len(), which));
        c.extend_from_slice(&[0; 4]);
        mov_edx(c, len as u32);
        c.extend_from_slice(&SYSCALL);
    };
    write(&mut code, &mut fixups, 0, marker.len());
    mov_eax(&mut code, 162); // sync
    code.extend_from_slice(&SYSCALL);
    mov_eax(&mut code, 169); // reboot
    mov_edi(&mut code, 0xfee1_dead);
    mov_esi(&mut code, 0x2812_1969);
    mov_edx(&mut code, 0x0123_4567);
    code.extend_from_slice(&[0x45, 0x31, 0xd2]); // xor r10d, r10d
    code.extend_from_slice(&SYSCALL);
    write(&mut code, &mut fixups, 1, failed.len());
    mov_eax(&mut code, 60); // exit
    mov_edi(&mut code, 1);
    code.extend_from_slice(&SYSCALL);
    code.extend_from_slice(&[0xeb, 0xfe]); // jmp . (exit does not return)
    let strings = [code.len(), code.len() + marker.len()];
    for (at, which) in fixups {
        // rel32 counts from the end of the lea, 4 bytes after the field.
        let rel = strings[which] as i64 - (at as i64 + 4);
        code[at..at + 4].copy_from_slice(&(rel as i32).to_le_bytes());
    }
    code.extend_from_slice(marker.as_bytes());
    code.extend_from_slice(failed.as_bytes());

    // One read-only, executable PT_LOAD of the whole file, the code right after the headers.
    let layout = ExecLayout {
        load_addr: INIT_BASE,
        code_offset: INIT_CODE_OFFSET,
        writable: false,
        mem_size: None,
        pvh_entry: None,
    };
    exec_elf(&layout, &code)
}

/// The /init script of the virtio-blk scenarios' root filesystems (which carry busybox).
pub fn init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         # Petrel boot test: reaching this line proves guest user mode runs.\n\
         echo {MARKER} > /dev/console\n\
         /bin/busybox reboot -f\n\
         # reboot -f does not return; if it fails, make that visible.\n\
         echo PETREL-BOOT-TEST-REBOOT-FAILED > /dev/console\n"
    )
}

/// Writes a `newc` ("070701") cpio archive. Entries get inode numbers 1, 2, ... and
/// mtime 0, so the same input always gives the same bytes.
#[derive(Debug)]
pub struct NewcWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

/// The fields of one newc header that vary between entries.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    ino: u32,
}

impl<W: Write> NewcWriter<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory; `path` has no leading slash.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    /// A regular file holding `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(&Header {
            name: TRAILER,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
            ino: 0,
        })?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name == TRAILER || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpio newc entries stop at 4 GiB",
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(&Header {
            name,
            mode,
            nlink,
            size,
            rdev,
            ino,
        })?;
        self.put(data)?;
        self.pad()
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let namesize = h.name.len() + 1;
        let namesize = u32::try_from(namesize)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check.
        let fields = [
            h.ino, h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
        ];
        let mut text = String::with_capacity(HEADER_LEN);
        text.push_str("070701");
        for f in fields {
            text.push_str(&format!("{f:08x}"));
        }
        debug_assert_eq!(text.len(), HEADER_LEN);
        self.put(text.as_bytes())?;
        self.put(h.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads with NULs to the next multiple of 4 bytes from the archive's start.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

/// Writes the whole boot-test archive: `/dev/console` (which the kernel opens for init's
/// fds 0, 1 and 2) and `/init`.
pub fn write_archive<W: Write>(out: W, init: &[u8]) -> io::Result<W> {
    let mut w = NewcWriter::new(out);
    w.dir("dev", 0o755)?;
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, init)?;
    w.finish()
}

/// Builds the archive (or finds it in the cache) and returns its path.
pub fn build(cache: &Cache) -> Result<PathBuf> {
    let init = init_program();
    if elf::is_static(&init) != Some(true) {
        return Err(Error::Other(
            "the generated /init is not a static ELF".into(),
        ));
    }
    let key = KeyBuilder::new("initramfs")
        .add("recipe", RECIPE_VERSION.as_bytes())
        .add("init", &init)
        .finish();
    let top = cache.dir("initramfs")?;
    let entry = top.join(&key);
    let path = entry.join(FILE_NAME);
    if path.is_file() {
        println!("initramfs: cached ({key})");
        return Ok(path);
    }
    let _lock = Lock::acquire(&top.join(format!("{key}.lock")))?;
    if path.is_file() {
        println!("initramfs: cached ({key}), built by another run");
        return Ok(path);
    }
    let tmp = top.join(format!("{key}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let tmp_file = tmp.join(FILE_NAME);
    let file = fs::File::create(&tmp_file).ctx(|| format!("creating {}", tmp_file.display()))?;
    write_archive(io::BufWriter::new(file), &init)
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .ctx(|| format!("writing {}", tmp_file.display()))?;
    publish_dir(&tmp, &entry)?;
    println!("initramfs: built ({key})");
    Ok(path)
}

/// Size of the file at `path`, for reports.
pub fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed newc entry.
    #[derive(Debug)]
    struct Entry {
        fields: Vec<u32>,
        name: String,
        data: Vec<u8>,
    }

    /// A reader written against the format description, to check the writer.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut out = Vec::new();
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "entry at {at} not 4-byte aligned");
            assert_eq!(&b[..6], b"070701");
            let fields: Vec<u32> = (0..13)
                .map(|i| {
                    let hex = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                    assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
                    u32::from_str_radix(hex, 16).unwrap()
                })
                .collect();
            let namesize = fields[11] as usize;
            let name_end = HEADER_LEN + namesize;
            assert_eq!(b[name_end - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(b[HEADER_LEN..name_end - 1].to_vec()).unwrap();
            let data_start = (at + name_end).div_ceil(4) * 4 - at;
            assert!(b[name_end..data_start].iter().all(|&x| x == 0));
            let size = fields[6] as usize;
            let data = b[data_start..data_start + size].to_vec();
            let next = (at + data_start + size).div_ceil(4) * 4 - at;
            assert!(b[data_start + size..next].iter().all(|&x| x == 0));
            b = &b[next..];
            let end = name == TRAILER;
            out.push(Entry { fields, name, data });
            if end {
                assert!(b.is_empty(), "bytes after trailer");
                return out;
            }
        }
    }

    #[test]
    fn header_format() {
        let mut w = NewcWriter::new(Vec::new());
        w.file("init", 0o755, b"hi").unwrap();
        let bytes = w.finish().unwrap();
        let expected = concat!(
            "070701", "00000001", "000081ed", "00000000", "00000000", "00000001", "00000000",
            "00000002", "00000000", "00000000", "00000000", "00000000", "00000005", "00000000",
        );
        assert_eq!(&bytes[..HEADER_LEN], expected.as_bytes());
        // 110 + 5 = 115: one NUL of padding, then the data at 116, padded to 120.
        assert_eq!(&bytes[HEADER_LEN..120], b"init\0\0hi\0\0");
    }

    #[test]
    fn padding_for_every_name_and_data_length() {
        for name_len in 1..=8 {
            for data_len in 0..=8 {
                let name = "n".repeat(name_len);
                let data = vec![0xa5; data_len];
                let mut w = NewcWriter::new(Vec::new());
                w.file(&name, 0o644, &data).unwrap();
                w.dir("d", 0o755).unwrap();
                let bytes = w.finish().unwrap();
                assert_eq!(bytes.len() % 4, 0);
                let entries = parse(&bytes);
                assert_eq!(entries.len(), 3);
                assert_eq!(entries[0].name, name);
                assert_eq!(entries[0].data, data);
                assert_eq!(entries[1].name, "d");
            }
        }
    }

    #[test]
    fn trailer() {
        let bytes = NewcWriter::new(Vec::new()).finish().unwrap();
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, "TRAILER!!!");
        assert_eq!(entries[0].fields[11], 11); // namesize counts the NUL
        assert_eq!(entries[0].fields[6], 0);
        // 110 + 11 = 121, padded to 124.
        assert_eq!(bytes.len(), 124);
    }

    #[test]
    fn node_types_and_devices() {
        let mut w = NewcWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let entries = parse(&w.finish().unwrap());
        assert_eq!(entries[0].fields[1], 0o040755);
        assert_eq!(entries[0].fields[4], 2);
        let console = &entries[1];
        assert_eq!(console.fields[1], 0o020600);
        assert_eq!((console.fields[9], console.fields[10]), (5, 1));
        assert_eq!(console.fields[6], 0);
        // Inode numbers are distinct and start at 1.
        assert_eq!(
            entries.iter().map(|e| e.fields[0]).collect::<Vec<_>>(),
            [1, 2, 0]
        );
    }

    #[test]
    fn bad_names_rejected() {
        let mut w = NewcWriter::new(Vec::new());
        assert!(w.file("/init", 0o755, b"").is_err());
        assert!(w.file("", 0o755, b"").is_err());
        assert!(w.file(TRAILER, 0o755, b"").is_err());
    }

    #[test]
    fn archive_contents() {
        let init = init_program();
        let bytes = write_archive(Vec::new(), &init).unwrap();
        let entries = parse(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", TRAILER]);
        assert_eq!(entries[2].fields[1], 0o100755);
        assert_eq!(entries[2].data, init);
        assert_eq!((entries[1].fields[9], entries[1].fields[10]), (5, 1));
        // Small enough that an emulated kernel unpacks it in no time.
        assert!(bytes.len() < 1024, "{}", bytes.len());
        // Deterministic: the cache key can rely on identical inputs giving identical bytes.
        assert_eq!(bytes, write_archive(Vec::new(), &init).unwrap());
    }

    /// Where `needle` is in `hay`.
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn init_program_is_a_static_elf_that_prints_and_reboots() {
        let f = init_program();
        // The same bytes as the hand-written writer this replaced produced.
        assert_eq!(
            crate::cache::sha256_hex(&f),
            "3045ea835feb0aa35520ab4a38408a2661fbe7d880ab25c0c389a997a039e59c"
        );
        assert_eq!(elf::is_static(&f), Some(true));
        let u64_at = |at: usize| u64::from_le_bytes(f[at..at + 8].try_into().unwrap());
        let entry = u64_at(0x18);
        assert_eq!(entry, INIT_BASE + INIT_CODE_OFFSET as u64);
        // The one PT_LOAD covers the file.
        assert_eq!(u64_at(64 + 32), f.len() as u64);
        let code = &f[INIT_CODE_OFFSET..];
        // write(1, ...): mov eax,1; mov edi,1; lea rsi,[rip+rel32]; mov edx,len; syscall.
        assert_eq!(&code[..13], b"\xb8\x01\0\0\0\xbf\x01\0\0\0\x48\x8d\x35");
        let rel = i32::from_le_bytes(code[13..17].try_into().unwrap());
        let text = (17 + rel as i64) as usize;
        let marker = format!("{MARKER}\n");
        assert_eq!(&code[text..text + marker.len()], marker.as_bytes());
        assert_eq!(code[17], 0xba);
        assert_eq!(
            u32::from_le_bytes(code[18..22].try_into().unwrap()) as usize,
            marker.len()
        );
        // reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_RESTART).
        let reboot = find(code, b"\xb8\xa9\0\0\0").unwrap();
        assert_eq!(
            &code[reboot + 5..reboot + 22],
            b"\xbf\xad\xde\xe1\xfe\xbe\x69\x19\x12\x28\xba\x67\x45\x23\x01\x45\x31"
        );
        assert!(find(code, format!("{REBOOT_FAILED}\n").as_bytes()).is_some());
        // The failure message's lea points at it.
        let second_lea = reboot + find(&code[reboot..], b"\x48\x8d\x35").unwrap();
        let rel = i32::from_le_bytes(code[second_lea + 3..second_lea + 7].try_into().unwrap());
        let text = (second_lea as i64 + 7 + rel as i64) as usize;
        assert!(code[text..].starts_with(REBOOT_FAILED.as_bytes()));
    }

    #[test]
    fn script_for_the_disk_scenarios() {
        let script = init_script();
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        assert!(script.contains(&format!("echo {MARKER} > /dev/console\n")));
        assert!(script.contains("reboot -f"));
        assert!(script.contains(REBOOT_FAILED));
    }
}
