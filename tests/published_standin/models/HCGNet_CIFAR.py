from .standin import PublishedNames


def HCGNet_A1(num_classes=100):
    return PublishedNames("hcgnet_a1", "HCGNet_A1.keys.txt", num_classes)


def HCGNet_A2(num_classes=100):
    return PublishedNames("hcgnet_a2", "HCGNet_A2.keys.txt", num_classes)


def HCGNet_A3(num_classes=100):
    return PublishedNames("hcgnet_a3", "HCGNet_A3.keys.txt", num_classes)
