# konnectivity/agent: proxy-agent on an empty root filesystem (see build-images.sh).
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin
ENTRYPOINT ["/usr/local/bin/proxy-agent"]
