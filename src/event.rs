use crate::{customer, inventory, order};

/// An event message and its place on the broker.
///
/// Every service publishes to its own topic exchange `<prefix>.<SOURCE>.events`
/// with the routing key [`Event::TYPE`]; consumers bind to the keys they handle.
pub trait Event: prost::Message + Default + Send + Sync + 'static {
    /// The service that publishes it, which names its exchange.
    const SOURCE: &'static str;
    /// Routing key and AMQP `type`, e.g. `order.created`.
    const TYPE: &'static str;
    /// Fully qualified protobuf name, used as CloudEvents `type`.
    const PROTO_NAME: &'static str;
    /// The kind of aggregate the event is about, e.g. `order`.
    const AGGREGATE: &'static str;

    /// The ID of the aggregate (CloudEvents `subject`); events of one aggregate
    /// are published in the order they were committed.
    fn aggregate_id(&self) -> &str;
}

/// One event type of [`ALL_EVENTS`]: the constants of its [`Event`] impl.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventType {
    /// [`Event::SOURCE`]: the publishing service.
    pub source: &'static str,
    /// [`Event::TYPE`]: the routing key.
    pub routing_key: &'static str,
    /// [`Event::PROTO_NAME`]: the protobuf message, CloudEvents `type`.
    pub proto_name: &'static str,
    /// [`Event::AGGREGATE`].
    pub aggregate: &'static str,
}

macro_rules! events {
    ($($ty:ty => $source:literal, $key:literal, $proto:literal, $aggregate:literal, $id:ident;)*) => {
        $(
            impl Event for $ty {
                const SOURCE: &'static str = $source;
                const TYPE: &'static str = $key;
                const PROTO_NAME: &'static str = $proto;
                const AGGREGATE: &'static str = $aggregate;

                fn aggregate_id(&self) -> &str {
                    &self.$id
                }
            }
        )*

        /// Every [`Event`] implementation, from the same list that defines
        /// them, so it cannot miss one: what `docs/asyncapi.yaml` must describe.
        pub const ALL_EVENTS: &[EventType] = &[$(EventType {
            source: <$ty as Event>::SOURCE,
            routing_key: <$ty as Event>::TYPE,
            proto_name: <$ty as Event>::PROTO_NAME,
            aggregate: <$ty as Event>::AGGREGATE,
        }),*];
    };
}

events! {
    customer::v1::CustomerRegistered => "customer", "customer.registered", "customer.v1.CustomerRegistered", "customer", customer_id;
    customer::v1::LoyaltyPointsChanged => "customer", "customer.points_changed", "customer.v1.LoyaltyPointsChanged", "customer", customer_id;
    inventory::v1::ProductChanged => "inventory", "product.changed", "inventory.v1.ProductChanged", "product", sku;
    inventory::v1::StockReserved => "inventory", "stock.reserved", "inventory.v1.StockReserved", "order", order_id;
    inventory::v1::StockRejected => "inventory", "stock.rejected", "inventory.v1.StockRejected", "order", order_id;
    inventory::v1::StockReleased => "inventory", "stock.released", "inventory.v1.StockReleased", "order", order_id;
    order::v1::OrderCreated => "order", "order.created", "order.v1.OrderCreated", "order", order_id;
    order::v1::OrderApproved => "order", "order.approved", "order.v1.OrderApproved", "order", order_id;
    order::v1::OrderRejected => "order", "order.rejected", "order.v1.OrderRejected", "order", order_id;
    order::v1::OrderCancelled => "order", "order.cancelled", "order.v1.OrderCancelled", "order", order_id;
}
