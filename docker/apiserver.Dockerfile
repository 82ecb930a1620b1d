# konnectivity/apiserver: the kube-apiserver side of the demo, konnectivity-kubectl (dials kubelets
# through the egress selector) and konnectivity-certs, plus busybox (see build-images.sh).
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin
CMD ["/bin/sh"]
