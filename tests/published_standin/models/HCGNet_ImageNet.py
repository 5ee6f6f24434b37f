from .standin import PublishedNames


def HCGNet_B(num_classes=1000):
    return PublishedNames("hcgnet_b", "HCGNet_B.keys.txt", num_classes)


def HCGNet_C(num_classes=1000):
    return PublishedNames("hcgnet_c", "HCGNet_C.keys.txt", num_classes)
