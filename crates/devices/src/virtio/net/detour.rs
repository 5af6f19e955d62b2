//! A detour on a virtio-net device's path: something in the VMM (the MMDS) that takes some of
//! the guest's frames instead of the tap, and has frames of its own for the guest.

/// Takes guest frames off the transmit path and hands frames to the receive path, set with
/// [`Net::set_detour`](super::Net::set_detour). Frames are Ethernet frames without the
/// virtio-net header: the device strips it on the way out and adds a blank one on the way in.
///
/// The device offers every transmitted frame (after the transmit rate limiter) to
/// [`detour_tx`](Self::detour_tx); a frame it takes never reaches the tap. On receive, the
/// device takes the detour's frames and the tap's in turn, one each while both have some, so
/// neither starves the other; after a transmit wake-up in which the detour took a frame, the
/// device delivers what the detour has at once (and raises the interrupt).
pub trait FrameDetour: Send {
    /// Offered each frame the guest sends. True: taken (it must not reach the tap); false:
    /// not the detour's, the device writes it to the tap.
    fn detour_tx(&mut self, frame: &[u8]) -> bool;

    /// Writes the next frame for the guest into `buf` and returns its length; `None` when
    /// there is none (or it did not fit `buf` and was dropped).
    fn next_rx(&mut self, buf: &mut [u8]) -> Option<usize>;

    /// Whether frames wait for the guest.
    fn has_rx(&self) -> bool;
}
