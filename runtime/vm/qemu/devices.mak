# The devices of rt's QEMU (integration/vm/install-guest builds it with
# --without-default-devices; this file replaces
# configs/devices/i386-softmmu/default.mak, which x86_64 includes).
# Only what rt's guests use: the microvm machine (which selects its own
# serial, RTC, APIC, virtio-mmio and PCIe host bridge), and on PCIe:
CONFIG_MICROVM=y
CONFIG_VIRTIO_PCI=y
# the agent's channel (virtio-serial; this host has no vhost-vsock)
CONFIG_VIRTIO_SERIAL=y
# the rootfs and bind mounts (virtiofsd)
CONFIG_VHOST_USER_FS=y
# the tap of a container's network namespace
CONFIG_VIRTIO_NET=y
# the tools disk, a block rootfs, the systemd suite's IO-limit disk
CONFIG_VIRTIO_BLK=y
# free page reporting
CONFIG_VIRTIO_BALLOON=y
