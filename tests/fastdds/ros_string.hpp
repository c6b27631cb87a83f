// What the Fast DDS talker and listener share: ROS 2's std_msgs/msg/String as it goes on the
// wire (no fastddsgen here, so the TopicDataType is written by hand), the topic, and the QoS
// and participant rmw_fastrtps would use. Everything else is Fast DDS' defaults: domain 0,
// PARTICIPANT_QOS_DEFAULT, its default transports, no XML profile.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <fastcdr/Cdr.h>
#include <fastcdr/FastBuffer.h>
#include <fastcdr/exceptions/Exception.h>
#include <fastdds/dds/domain/DomainParticipant.hpp>
#include <fastdds/dds/domain/DomainParticipantFactory.hpp>
#include <fastdds/dds/publisher/qos/DataWriterQos.hpp>
#include <fastdds/dds/subscriber/qos/DataReaderQos.hpp>
#include <fastdds/dds/topic/Topic.hpp>
#include <fastdds/dds/topic/TopicDataType.hpp>
#include <fastdds/dds/topic/TypeSupport.hpp>

namespace ros_judge {

namespace fdds = eprosima::fastdds::dds;
namespace frtps = eprosima::fastrtps::rtps;

// ROS 2's names: the "rt/" prefix of a ROS topic and the DDS type of std_msgs/msg/String.
constexpr const char* TOPIC = "rt/microk8s_chatter";
constexpr const char* TYPE = "std_msgs::msg::dds_::String_";
constexpr fdds::DomainId_t DOMAIN = 0;

struct StringMsg {
    std::string data;
};

// A CDR struct with one string field `data`, encapsulated as plain CDR (what rmw_fastrtps
// sends): 4 bytes of encapsulation header, then the string's length (with its NUL) and bytes.
class StringType : public fdds::TopicDataType {
public:
    StringType()
    {
        setName(TYPE);
        // Header + length + a generous bound for the preallocated payloads; longer strings
        // are still sent (the size provider below gives the real size).
        m_typeSize = 4 + 4 + 1024;
        m_isGetKeyDefined = false;
        // rmw_fastrtps sends no TypeObject/TypeInformation either.
        auto_fill_type_object(false);
        auto_fill_type_information(false);
    }

    bool serialize(void* data, frtps::SerializedPayload_t* payload) override
    {
        auto* msg = static_cast<StringMsg*>(data);
        eprosima::fastcdr::FastBuffer buffer(reinterpret_cast<char*>(payload->data), payload->max_size);
        eprosima::fastcdr::Cdr ser(buffer, eprosima::fastcdr::Cdr::DEFAULT_ENDIAN,
                eprosima::fastcdr::Cdr::DDS_CDR);
        payload->encapsulation = ser.endianness() == eprosima::fastcdr::Cdr::BIG_ENDIANNESS ?
                CDR_BE : CDR_LE;
        try {
            ser.serialize_encapsulation();
            ser << msg->data;
        } catch (eprosima::fastcdr::exception::Exception&) {
            return false;
        }
        payload->length = static_cast<uint32_t>(ser.getSerializedDataLength());
        return true;
    }

    bool deserialize(frtps::SerializedPayload_t* payload, void* data) override
    {
        auto* msg = static_cast<StringMsg*>(data);
        eprosima::fastcdr::FastBuffer buffer(reinterpret_cast<char*>(payload->data), payload->length);
        eprosima::fastcdr::Cdr deser(buffer, eprosima::fastcdr::Cdr::DEFAULT_ENDIAN,
                eprosima::fastcdr::Cdr::DDS_CDR);
        try {
            deser.read_encapsulation();
            deser >> msg->data;
        } catch (eprosima::fastcdr::exception::Exception&) {
            return false;
        }
        return true;
    }

    std::function<uint32_t()> getSerializedSizeProvider(void* data) override
    {
        auto* msg = static_cast<StringMsg*>(data);
        // Encapsulation header, length, bytes and the terminating NUL.
        return [msg]() { return static_cast<uint32_t>(4 + 4 + msg->data.size() + 1); };
    }

    void* createData() override { return new StringMsg(); }
    void deleteData(void* data) override { delete static_cast<StringMsg*>(data); }

    bool getKey(void*, frtps::InstanceHandle_t*, bool) override { return false; }
};

// rclcpp's default QoS (create_publisher(topic, 10)): reliable, volatile, keep last 10. Fast
// DDS' own defaults differ (e.g. a transient-local writer), so it is set as ROS 2 sets it.
template<typename Qos>
void ros_default_qos(Qos& qos)
{
    qos.reliability().kind = fdds::RELIABLE_RELIABILITY_QOS;
    qos.durability().kind = fdds::VOLATILE_DURABILITY_QOS;
    qos.history().kind = fdds::KEEP_LAST_HISTORY_QOS;
    qos.history().depth = 10;
}

// Fast DDS' default participant on domain 0; only its name and USER_DATA are set, as ROS 2
// sets them (USER_DATA carries no transport setting). A listener given here hears participant
// discovery only (which no status mask gates): with the full mask it would also take
// on_data_on_readers, and Fast DDS would then never call the reader's on_data_available.
inline fdds::DomainParticipant* default_participant(const std::string& name,
        fdds::DomainParticipantListener* listener = nullptr, const std::string& user_data = "")
{
    fdds::DomainParticipantQos qos = fdds::PARTICIPANT_QOS_DEFAULT;
    qos.name(name);
    qos.user_data().data_vec(std::vector<eprosima::fastrtps::rtps::octet>(user_data.begin(), user_data.end()));
    return fdds::DomainParticipantFactory::get_instance()->create_participant(DOMAIN, qos, listener,
            fdds::StatusMask::none());
}

// The participant's rt/microk8s_chatter topic, with ROS 2's String type registered; null when
// there is no participant or either step fails.
inline fdds::Topic* chatter_topic(fdds::DomainParticipant* participant)
{
    if (!participant) {
        return nullptr;
    }
    fdds::TypeSupport type(new StringType());
    if (type.register_type(participant) != ReturnCode_t::RETCODE_OK) {
        return nullptr;
    }
    return participant->create_topic(TOPIC, TYPE, fdds::TOPIC_QOS_DEFAULT);
}

// "01.0f" for eProsima, "01.10" for Eclipse CycloneDDS: as the vendor id registry writes it.
inline std::string vendor_string(const frtps::VendorId_t& v)
{
    char s[8];
    std::snprintf(s, sizeof s, "%02x.%02x", v[0], v[1]);
    return s;
}

inline std::string guid_prefix_string(const frtps::GuidPrefix_t& p)
{
    std::string s;
    char b[4];
    for (size_t i = 0; i < frtps::GuidPrefix_t::size; ++i) {
        std::snprintf(b, sizeof b, i ? ".%02x" : "%02x", p.value[i]);
        s += b;
    }
    return s;
}

} // namespace ros_judge
