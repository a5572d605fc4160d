SUMMARY = "Minimal systemd image updated by otter"
DESCRIPTION = "core-image-minimal plus otter: published as an ostree-friendly OCI image layout \
               (otter-oci) and as a first disk image (wic) whose root is an otter-installed \
               ostree sysroot."
HOMEPAGE = "https://github.com/otter-ota/otter"
BUGTRACKER = "https://github.com/otter-ota/otter/issues"
SECTION = "images"
LICENSE = "MIT"
CVE_PRODUCT = "otter-ota:otter"

inherit core-image otter-image

OTTER_IMAGE_VERSION ?= "0.1.0"
IMAGE_FSTYPES:append = " wic"
IMAGE_INSTALL:append = " packagegroup-core-boot"
