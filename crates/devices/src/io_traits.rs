//! rust-vmm's device traits ([`vm_device`] 0.1) for Petrel's devices, so that a VMM built on
//! vm-device's `IoManager` can register them: the port devices implement [`MutDevicePio`]
//! (register `Arc<Mutex<Serial>>` as an `Arc<dyn DevicePio + Send + Sync>`; vm-device's own
//! impl for `Mutex<T>` does the locking), the virtio-mmio transport
//! [`vm_device::MutDeviceMmio`].
//!
//! Each forwards to the device's [`BusDevice`] methods with the offset vm-device passes. A
//! write's [`BusOutcome`](crate::BusOutcome) has no place in vm-device's `()`: the only device
//! that asks for a stop, the i8042, keeps it for [`I8042::take_stop_request`].
//!
//! The other way round, Petrel's [`Bus`](crate::Bus) takes any vm-device device with
//! [`BusBuilder::insert_pio`](crate::BusBuilder::insert_pio) and
//! [`insert_mmio`](crate::BusBuilder::insert_mmio).

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::MutDevicePio;
#[cfg(feature = "virtio")]
use vm_device::{
    bus::{MmioAddress, MmioAddressOffset},
    MutDeviceMmio,
};

use crate::{BusDevice, CmosRtc, PostCodeSink, Serial, I8042};

/// `MutDevicePio` for port devices whose writes never stop the VM.
macro_rules! mut_device_pio {
    ($($device:ty),* $(,)?) => {
        $(
            impl MutDevicePio for $device {
                fn pio_read(
                    &mut self,
                    _base: PioAddress,
                    offset: PioAddressOffset,
                    data: &mut [u8],
                ) {
                    BusDevice::read(self, u64::from(offset), data);
                }

                fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
                    // These devices always answer `Continue`.
                    let _ = BusDevice::write(self, u64::from(offset), data);
                }
            }
        )*
    };
}

mut_device_pio!(Serial, CmosRtc, PostCodeSink);

impl MutDevicePio for I8042 {
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        BusDevice::read(self, u64::from(offset), data);
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let outcome = BusDevice::write(self, u64::from(offset), data);
        self.keep_stop_request(outcome);
    }
}

#[cfg(feature = "virtio")]
impl<D, M> MutDeviceMmio for crate::virtio::VirtioMmio<D, M>
where
    D: crate::virtio::VirtioDevice<M>,
    M: crate::virtio::VirtioMemory,
{
    fn mmio_read(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        BusDevice::read(self, offset, data);
    }

    fn mmio_write(&mut self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        // The transport always answers `Continue`.
        let _ = BusDevice::write(self, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_device::bus::{PioAddress, PioRange};
    use vm_device::device_manager::{IoManager, PioManager};
    use vm_device::DevicePio;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use crate::{PostCodeSink, Serial, StopRequest, COM1_BASE, I8042, I8042_BASE};

    fn pio_range(base: u64, len: u16) -> PioRange {
        PioRange::new(PioAddress(base as u16), len).unwrap()
    }

    #[test]
    fn petrel_port_devices_work_under_vm_devices_io_manager() {
        let mut io = IoManager::new();
        let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(Serial::new(evt(), Box::new(std::io::sink()))));
        let kbd = Arc::new(Mutex::new(I8042::new(evt())));
        let post = Arc::new(Mutex::new(PostCodeSink::new()));
        io.register_pio(pio_range(COM1_BASE, 8), serial.clone())
            .unwrap();
        io.register_pio(pio_range(I8042_BASE, 5), kbd.clone())
            .unwrap();
        io.register_pio(
            pio_range(0x80, 1),
            post.clone() as Arc<dyn DevicePio + Send + Sync>,
        )
        .unwrap();

        // A byte to the 16550's transmit register reaches its output.
        io.pio_write(PioAddress(0x3f8), b"A").unwrap();
        assert!(serial.lock().unwrap().first_output_at().is_some());
        // LSR (offset 5) says the transmitter is empty.
        let mut lsr = [0u8];
        io.pio_read(PioAddress(0x3fd), &mut lsr).unwrap();
        assert_ne!(lsr[0] & 0x40, 0, "{:#x}", lsr[0]);
        // The POST code lands at offset 0.
        io.pio_write(PioAddress(0x80), &[0x42]).unwrap();
        assert_eq!(post.lock().unwrap().last_code(), Some(0x42));
        // The i8042's reset command cannot be returned through vm-device: it is kept.
        io.pio_write(PioAddress(0x64), &[0xfe]).unwrap();
        let mut kbd = kbd.lock().unwrap();
        assert_eq!(kbd.take_stop_request(), Some(StopRequest::Reset));
        assert_eq!(kbd.take_stop_request(), None);
    }
}
