# konnectivity/node: the demo's node, the kubelet stand-in plus busybox, so the stand-in's exec runs
# real processes and a busybox httpd can play the pod its port-forward reaches (see build-images.sh).
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin
CMD ["/bin/sh"]
