//! Register offsets of a virtio-mmio window (virtio v1.2, 4.2.2 MMIO Device Register Layout),
//! for drivers, tests and fuzzers that speak to the transport.

use super::QUEUE_NOTIFY_OFFSET;

/// MagicValue: "virt".
pub const REG_MAGIC_VALUE: u64 = 0x000;
/// Version: 2, the modern (non-legacy) interface.
pub const REG_VERSION: u64 = 0x004;
/// DeviceID.
pub const REG_DEVICE_ID: u64 = 0x008;
/// VendorID.
pub const REG_VENDOR_ID: u64 = 0x00c;
/// DeviceFeatures: 32 bits of the device's features, selected by DeviceFeaturesSel.
pub const REG_DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel.
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures: 32 bits of the driver's, selected by DriverFeaturesSel.
pub const REG_DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel.
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel: the queue the Queue* registers are about.
pub const REG_QUEUE_SEL: u64 = 0x030;
/// QueueNumMax.
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
/// QueueNum: the queue size the driver chose.
pub const REG_QUEUE_NUM: u64 = 0x038;
/// QueueReady.
pub const REG_QUEUE_READY: u64 = 0x044;
/// QueueNotify (an ioeventfd in Petrel's VMM).
pub const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
/// InterruptStatus.
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK.
pub const REG_INTERRUPT_ACK: u64 = 0x064;
/// Status: the device status bits.
pub const REG_STATUS: u64 = 0x070;
/// QueueDescLow.
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
/// QueueDescHigh.
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
/// QueueDriverLow (the available ring).
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
/// QueueDriverHigh.
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
/// QueueDeviceLow (the used ring).
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// QueueDeviceHigh.
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// SHMSel.
pub const REG_SHM_SEL: u64 = 0x0ac;
/// SHMLenLow.
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
/// SHMLenHigh.
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
/// SHMBaseLow.
pub const REG_SHM_BASE_LOW: u64 = 0x0b8;
/// SHMBaseHigh.
pub const REG_SHM_BASE_HIGH: u64 = 0x0bc;
/// QueueReset.
pub const REG_QUEUE_RESET: u64 = 0x0c0;
/// ConfigGeneration.
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
